#!/usr/bin/env bash
# Installs what the tests need (the mosquitto broker, a virtual environment with the project and its
# test extras) and runs the whole suite. Extra arguments go to pytest. Fails on any failed test and when
# no test was collected.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/usr/local/sbin"   # Debian installs mosquitto in /usr/sbin

if ! command -v mosquitto >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
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
