#!/usr/bin/env bash
# Installs what the tests need (the mosquitto and nats-server brokers, systemd-analyze, podman for the
# container tests, Node.js and the Azure Storage emulator Azurite in the git-ignored .cache/azurite, a
# virtual environment with the project and its test extras) and runs the whole suite. Extra arguments go to
# pytest. Fails on any failed test and when no test was collected.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/usr/local/sbin"   # Debian installs mosquitto in /usr/sbin

# mosquitto for the brokers and nats-server for the 3-node NATS cluster variant; systemd-analyze (package systemd)
# to verify the unit; podman, runc and debootstrap for the container tests (tests/containers, docs/testing.md),
# which build their base image; Node.js and npm for Azurite.
missing=()
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v nats-server >/dev/null || missing+=(nats-server)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v npm >/dev/null || missing+=(nodejs npm)
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get -o DPkg::Lock::Timeout=300 update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# Azurite for the blob container tests (tests/azurite.py); they are skipped, saying why, if this fails.
if command -v npm >/dev/null && [ ! -x .cache/azurite/node_modules/.bin/azurite-blob ]; then
    npm install --prefix .cache/azurite --no-audit --no-fund --loglevel=error 'azurite@^3.35' >/dev/null \
        || echo "scripts/test.sh: npm could not install azurite; the blob container tests will be skipped" >&2
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# The editable install leaves node_agent uncompiled (pip compiles only what it copies into site-packages), and
# where PYTHONDONTWRITEBYTECODE is set Python never caches it: every agent, fork server and task supervisor the
# tests start would compile node_agent from source again (a third of an agent's start-up CPU). Compile it once.
.venv/bin/python -m compileall -q node_agent
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
