"""The systemd unit, `node-agent install-service`, and the health file's check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node_agent.ops.doctor import _task_users
from node_agent.ops.health import check_health, write_health
from node_agent.ops.service import CONFIG_PATH, UNIT_PATH, render_unit

REPO = Path(__file__).resolve().parents[2]
AGENT = Path(sys.executable).parent / "node-agent"


def install(destdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [str(AGENT), "install-service", "--root", str(destdir), "--exec", str(AGENT), *extra]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)


def test_the_unit_in_the_repository_is_the_one_install_service_writes() -> None:
    assert (REPO / "systemd" / "node-agent.service").read_text() == render_unit()


def test_install_service_lays_down_unit_and_config_and_keeps_an_existing_config(tmp_path: Path) -> None:
    install(tmp_path, "--broker", "mqtt://broker.example:1883")
    unit, config = tmp_path / UNIT_PATH, tmp_path / CONFIG_PATH
    assert f"ExecStart={AGENT} run --config /etc/node-agent/agent.toml" in unit.read_text()
    assert 'broker_url = "mqtt://broker.example:1883"' in config.read_text()
    assert config.stat().st_mode & 0o777 == 0o600  # it may hold the broker password
    config.write_text('broker_url = "mqtt://mine:1883"\n')
    output = install(tmp_path).stdout
    assert "kept the existing" in output
    assert config.read_text() == 'broker_url = "mqtt://mine:1883"\n'
    subprocess.run([str(AGENT), "run", "--help"], check=True, capture_output=True, timeout=60)  # ExecStart runs


def test_installed_config_loads(tmp_path: Path) -> None:
    from node_agent.config import load_settings

    install(tmp_path)
    settings = load_settings(tmp_path / CONFIG_PATH)
    assert settings.root == Path("/var/lib/node-agent")
    assert settings.resolved_state_dir == Path("/var/lib/node-agent-state")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (apt: systemd)")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    install(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / UNIT_PATH)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "node-agent.service" not in result.stderr, result.stderr  # no warning about our unit either


def test_health_check(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    assert "not running" in (check_health(path) or "")
    now = time.time()
    write_health(path, {"pid": os.getpid(), "time": now, "interval_s": 1.0, "connected": True})
    assert check_health(path, now=now + 1) is None
    assert "stuck" in (check_health(path, now=now + 10) or "")
    write_health(path, {"pid": os.getpid(), "time": now, "interval_s": 1.0, "connected": False})
    assert "not connected" in (check_health(path, now=now) or "")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps({"pid": int(dead.stdout), "time": now, "interval_s": 1.0, "connected": True}))
    assert "gone" in (check_health(path, now=now) or "")


def test_doctor_says_task_users_need_root_and_useradd() -> None:
    assert _task_users(lambda: 1000, shutil.which).is_ok is False
    missing = _task_users(lambda: 0, lambda tool: None if tool == "useradd" else "/usr/sbin/" + tool)
    assert not missing.is_ok and "useradd" in missing.message and "apt-get install passwd" in missing.fix
    assert _task_users(lambda: 0, lambda tool: "/usr/sbin/" + tool).is_ok
