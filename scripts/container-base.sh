#!/usr/bin/env bash
# Makes the local Debian base image the container tests build on (no registry is reachable in CI):
# debootstrap bookworm with python3 and venv, imported into podman as localhost/debian-python:bookworm.
# Cached by tag: does nothing when the image exists. About 40 s and 300 MB the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/tests/containers/containers.conf}"
image="${1:-localhost/debian-python:bookworm}"
podman image exists "$image" && exit 0
mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
mirror="${mirror:-http://deb.debian.org/debian}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    bookworm "$dir" "$mirror" >/dev/null
tar -C "$dir" -c . | podman import - "$image" >/dev/null
echo "container-base.sh: made $image"
