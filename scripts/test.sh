#!/usr/bin/env bash
# Installs what the tests need (the mosquitto broker, systemd-analyze, podman for the container tests, a
# virtual environment with the project and its test extras) and runs the whole suite. Extra arguments go
# to pytest. Fails on any failed test and when no test was collected.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/usr/local/sbin"   # Debian installs mosquitto in /usr/sbin

# mosquitto for the brokers; systemd-analyze (package systemd) to verify the unit; podman, runc and
# debootstrap for the container tests (tests/containers, docs/testing.md), which build their base image.
missing=()
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get -o DPkg::Lock::Timeout=300 update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check node_agent tests examples bench
.venv/bin/ruff format --check --quiet node_agent tests examples bench
.venv/bin/mypy node_agent

status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "scripts/test.sh: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
