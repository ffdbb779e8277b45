"""Podman for the container tests: the engine settings of this directory, the local Debian base, image builds."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONF = Path(__file__).with_name("containers.conf")
BASE_IMAGE = "localhost/debian-python:bookworm"
AGENT_IMAGE = "localhost/node-agent:test"
BROKER_IMAGE = "localhost/node-agent-test-mosquitto:bookworm"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")  # pip in a build step trusts what the host trusts
BUILD_TIMEOUT_S = 900


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONF)}


def require_podman() -> str:
    podman = shutil.which("podman")
    if podman is None:
        pytest.skip("podman is not installed (scripts/test.sh installs it with apt-get: podman runc debootstrap)")
    return podman


def podman(*args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout_s, check=check
    )


def ensure_base_image() -> None:
    """The debootstrapped base (scripts/container-base.sh), made once and cached by its tag."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return
    if shutil.which("debootstrap") is None:
        pytest.skip(f"{BASE_IMAGE} is missing and debootstrap is not installed to make it")
    subprocess.run(
        ["bash", str(REPO / "scripts" / "container-base.sh"), BASE_IMAGE],
        env=podman_env(), check=True, timeout=BUILD_TIMEOUT_S, capture_output=True,
    )  # fmt: skip


def build(tag: str, context: Path, *extra: str) -> None:
    """``podman build`` on the local base, host network, host CA mounted read-only (nothing of it is kept)."""
    mount = ["-v", f"{HOST_CA}:{HOST_CA}:ro"] if HOST_CA.exists() else []
    args = ["build", "--network", "host", *mount, "--build-arg", f"BASE={BASE_IMAGE}", "-t", tag, *extra, str(context)]
    result = podman(*args, timeout_s=BUILD_TIMEOUT_S, check=False)
    assert result.returncode == 0, f"podman build of {tag} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


async def apodman(*args: str, timeout_s: float = 120) -> tuple[int, str]:
    """``podman`` off the event loop: (exit status, stdout+stderr)."""
    proc = await asyncio.create_subprocess_exec(
        "podman", *args, env=podman_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(timeout_s):
            output, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, output.decode(errors="replace")
