"""`node-agent doctor` against real brokers: what it finds, the fix it prints, its exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from node_agent.brokers import BrokerHandle, BrokerSecurity, free_port
from node_agent.testing.fixtures import BrokerFactory

AGENT = Path(sys.executable).parent / "node-agent"


def doctor(tmp_path: Path, broker_url: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("NODE_AGENT_")}
    values = {"broker_url": broker_url, "root": str(tmp_path / "root"), "state_dir": str(tmp_path / "state")}
    env.update({f"NODE_AGENT_{key.upper()}": value for key, value in {**values, **settings}.items()})
    return subprocess.run([str(AGENT), "doctor"], env=env, capture_output=True, text=True, timeout=60)


def test_doctor_passes_on_a_healthy_node(mqtt_broker: BrokerHandle, tmp_path: Path) -> None:
    result = doctor(tmp_path, mqtt_broker.url)
    assert result.returncode == 0, result.stdout
    assert f"ok   broker mqtt://127.0.0.1:{mqtt_broker.port}: connected anonymously" in result.stdout
    assert "no problems found" in result.stdout


def test_doctor_names_each_problem_with_its_fix(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    result = doctor(tmp_path, f"mqtt://127.0.0.1:{port}", disk_free_threshold_bytes=str(1 << 62))
    assert result.returncode == 1
    assert f"FAIL broker mqtt://127.0.0.1:{port}: cannot connect" in result.stdout
    assert f"fix: check that the broker runs and listens on 127.0.0.1:{port}" in result.stdout
    assert "FAIL free disk" in result.stdout and "2 problem(s) found" in result.stdout


def test_doctor_reports_a_refused_login(mqtt_broker_factory: BrokerFactory, tmp_path: Path) -> None:
    broker = mqtt_broker_factory(BrokerSecurity(users={"node1": "right"}))
    result = doctor(tmp_path, broker.url_for("node1", "wrong"))
    assert result.returncode == 1
    assert "the broker refused the login as 'node1'" in result.stdout
    assert "wrong" not in result.stdout  # never the password
    assert doctor(tmp_path, broker.url_for("node1", "right")).returncode == 0


def test_doctor_reports_bad_configuration(tmp_path: Path) -> None:
    result = doctor(tmp_path, "mqtt://127.0.0.1:1", task_slots="0")
    assert result.returncode == 1
    assert "FAIL config: invalid setting task_slots (NODE_AGENT_TASK_SLOTS)" in result.stdout


def test_doctor_reports_a_root_it_cannot_use(tmp_path: Path, mqtt_broker: BrokerHandle) -> None:
    (tmp_path / "file").write_text("")
    result = doctor(tmp_path, mqtt_broker.url, root=str(tmp_path / "file" / "root"))
    assert result.returncode == 1
    assert f"FAIL node root: {tmp_path / 'file'} is not a directory" in result.stdout
