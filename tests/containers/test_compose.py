"""compose.yaml: valid, and brought up once with podman-compose (broker image from the test override)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from node_agent.brokers import free_port
from node_agent.testing.nodes import fresh_prefix
from tests.containers.podman import BROKER_IMAGE, REPO, build, podman, podman_env, require_podman

pytestmark = pytest.mark.containers
OVERRIDE = Path(__file__).with_name("compose.test.yaml")
TIMEOUT_S = 300.0


def podman_compose() -> str:
    found = shutil.which("podman-compose") or str(Path(sys.executable).parent / "podman-compose")
    if not Path(found).exists():
        pytest.skip("podman-compose is not installed (pip install podman-compose; the test extra has it)")
    return found


def test_compose_file_is_valid() -> None:
    require_podman()
    env = {**podman_env(), "BROKER_PORT": "1883", "PREFIX": "batch"}
    for files in (["-f", "compose.yaml"], ["-f", "compose.yaml", "-f", str(OVERRIDE)]):
        result = subprocess.run(
            [podman_compose(), *files, "config"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "localhost/node-agent" in result.stdout
    if shutil.which("docker-compose"):  # Debian's docker-compose validates without an engine
        result = subprocess.run(
            ["docker-compose", "-f", "compose.yaml", "config", "-q"], cwd=REPO, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr


def test_compose_up_runs_the_sample_on_the_pool(agent_image: str) -> None:
    compose = podman_compose()
    if podman("image", "exists", BROKER_IMAGE, check=False).returncode != 0:
        build(BROKER_IMAGE, OVERRIDE.parent / "mosquitto")
    project = f"natest{uuid.uuid4().hex[:8]}"
    env = {**podman_env(), "BROKER_PORT": str(free_port()), "PREFIX": fresh_prefix()}
    base = [compose, "-p", project, "-f", str(REPO / "compose.yaml"), "-f", str(OVERRIDE)]
    try:
        up = subprocess.run([*base, "up", "-d"], cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        waited = podman("wait", f"{project}_sample_1", timeout_s=TIMEOUT_S)
        logs = podman("logs", f"{project}_sample_1").stdout
        assert waited.stdout.strip() == "0", logs  # the sample service's exit status
        assert "compose1:\n  Prep task exit code:    0\n  Release task exit code: 0" in logs, logs
    finally:
        subprocess.run([*base, "down", "-t", "0"], cwd=REPO, env=env, capture_output=True, timeout=TIMEOUT_S)
