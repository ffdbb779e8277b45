"""AgentSettings: TOML values, NODE_AGENT_* variables winning over them, broker URLs, one-line errors."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from node_agent.config import AgentSettings, BrokerAddress, load_settings, parse_broker_urls
from node_agent.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NODE_AGENT_* variable of the developer's shell may leak into these tests."""
    for name in list(os.environ):
        if name.startswith("NODE_AGENT_"):
            monkeypatch.delenv(name)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_follow_the_protocol_table() -> None:
    settings = load_settings()
    assert settings.broker_url == "mqtt://127.0.0.1:1883"
    assert settings.topic_prefix == "batch"
    assert settings.pool_id == "default"
    assert settings.root == Path("/var/lib/node-agent")
    assert settings.resolved_state_dir == Path("/var/lib/node-agent-state")
    assert settings.task_slots == (os.cpu_count() or 1)
    assert settings.boot_id_file == Path("/proc/sys/kernel/random/boot_id")
    assert settings.retention_sweep_interval == timedelta(minutes=1)
    assert settings.disk_free_threshold_bytes == 1 << 30
    assert settings.disk_free_probe_file is None


def test_node_id_defaults_to_a_valid_id_derived_from_the_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "build.example.com")
    assert load_settings().node_id == "build-example-com"


def test_toml_file_values_are_read(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path,
        'broker_url = "mqtts://broker.example:8884"\n'
        'topic_prefix = "tenant/a"\n'
        'node_id = "n1"\n'
        'pool_id = "p1"\n'
        f'root = "{tmp_path / "root"}"\n'
        "task_slots = 3\n"
        'shutdown_grace = "PT2S"\n'
        'retention_sweep_interval = "PT5M"\n',
    )
    settings = load_settings(config)
    assert (settings.topic_prefix, settings.node_id, settings.pool_id) == ("tenant/a", "n1", "p1")
    assert settings.root == tmp_path / "root"
    assert settings.resolved_state_dir == tmp_path / "node-agent-state"
    assert settings.task_slots == 3
    assert settings.shutdown_grace == timedelta(seconds=2)
    assert settings.retention_sweep_interval == timedelta(minutes=5)
    assert settings.brokers == [BrokerAddress("broker.example", 8884, tls=True)]


def test_environment_variable_wins_over_the_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_toml(tmp_path, 'node_id = "from-file"\ntask_slots = 3\npool_id = "file-pool"\n')
    monkeypatch.setenv("NODE_AGENT_NODE_ID", "from-env")
    monkeypatch.setenv("NODE_AGENT_TASK_SLOTS", "7")
    monkeypatch.setenv("NODE_AGENT_SHUTDOWN_GRACE", "PT1S")
    settings = load_settings(config)
    assert (settings.node_id, settings.task_slots) == ("from-env", 7)
    assert settings.pool_id == "file-pool"  # not set in the environment: the file's value stays
    assert settings.shutdown_grace == timedelta(seconds=1)


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NODE_AGENT_ROOT", "nodes/root")
    monkeypatch.setenv("NODE_AGENT_STATE_DIR", "nodes/state")
    settings = load_settings()
    assert settings.root == tmp_path / "nodes" / "root"
    assert settings.resolved_state_dir == tmp_path / "nodes" / "state"


@pytest.mark.parametrize(
    ("variable", "value", "setting"),
    [
        ("NODE_AGENT_TASK_SLOTS", "0", "task_slots"),
        ("NODE_AGENT_TASK_SLOTS", "257", "task_slots"),
        ("NODE_AGENT_TASK_SLOTS", "many", "task_slots"),
        ("NODE_AGENT_NODE_ID", "a/b", "node_id"),
        ("NODE_AGENT_NODE_ID", "x" * 65, "node_id"),
        ("NODE_AGENT_NODE_ID", "", "node_id"),
        ("NODE_AGENT_POOL_ID", "p+", "pool_id"),
        ("NODE_AGENT_TOPIC_PREFIX", "batch/#", "topic_prefix"),
        ("NODE_AGENT_TOPIC_PREFIX", "/batch", "topic_prefix"),
        ("NODE_AGENT_TOPIC_PREFIX", "batch/", "topic_prefix"),
        ("NODE_AGENT_BROKER_URL", "http://127.0.0.1:1883", "broker_url"),
        ("NODE_AGENT_BROKER_URL", "mqtt://", "broker_url"),
        ("NODE_AGENT_BROKER_URL", " , ", "broker_url"),
        ("NODE_AGENT_SHUTDOWN_GRACE", "soon", "shutdown_grace"),
        ("NODE_AGENT_LOG_LEVEL", "loud", "log_level"),
        ("NODE_AGENT_RETENTION_SWEEP_INTERVAL", "PT0S", "retention_sweep_interval"),
        ("NODE_AGENT_DISK_FREE_THRESHOLD_BYTES", "-1", "disk_free_threshold_bytes"),
    ],
)
def test_invalid_setting_raises_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, setting: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert setting in message and "\n" not in message


def test_unknown_key_in_the_toml_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="task_slot"):
        load_settings(write_toml(tmp_path, "task_slot = 2\n"))  # a typo must not be ignored


def test_unreadable_or_malformed_toml_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(write_toml(tmp_path, "task_slots = \n"))


# -- broker URLs ---------------------------------------------------------------------------------------------


def test_broker_url_default_ports_and_tls() -> None:
    assert parse_broker_urls("mqtt://broker") == [BrokerAddress("broker", 1883)]
    assert parse_broker_urls("mqtts://broker") == [BrokerAddress("broker", 8883, tls=True)]
    assert parse_broker_urls("mqtt://10.0.0.5:2883") == [BrokerAddress("10.0.0.5", 2883)]


def test_broker_url_user_and_password_are_url_decoded() -> None:
    [address] = parse_broker_urls("mqtts://agent%40pool:p%3As%2Fw%40rd@broker.example:8884")
    assert address == BrokerAddress("broker.example", 8884, tls=True, username="agent@pool", password="p:s/w@rd")
    [user_only] = parse_broker_urls("mqtt://agent@broker")
    assert (user_only.username, user_only.password) == ("agent", None)


def test_broker_url_comma_list_names_every_node_in_order() -> None:
    addresses = parse_broker_urls("mqtt://a:1884, mqtt://b ,mqtts://u:p@c:8884,")
    assert addresses == [
        BrokerAddress("a", 1884),
        BrokerAddress("b", 1883),
        BrokerAddress("c", 8884, tls=True, username="u", password="p"),
    ]


def test_broker_url_ipv6_host() -> None:
    assert parse_broker_urls("mqtt://[::1]:1884") == [BrokerAddress("::1", 1884)]


@pytest.mark.parametrize(
    "url", ["http://broker", "ws://broker:80", "broker:1883", "mqtt://", "", ",", "mqtt://a,tcp://b"]
)
def test_broker_url_with_a_bad_scheme_or_no_host_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="broker url|no broker url"):
        parse_broker_urls(url)


def test_settings_are_frozen() -> None:
    settings = AgentSettings()
    with pytest.raises(ValueError):
        settings.task_slots = 3  # type: ignore[misc]


def test_broker_login_from_settings_fills_urls_without_one(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret:@/\nignored second line\n")
    settings = load_settings(
        broker_url="mqtts://b1:8883,mqtts://other:pw@b2",
        broker_username="node1",
        broker_password_file=str(secret),
    )
    assert [(b.username, b.password) for b in settings.brokers] == [("node1", "s3cret:@/"), ("other", "pw")]
    assert "s3cret" not in repr(settings)  # only the file's path is a setting


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"tls_cert_file": "CERT"}, "go together"),
        ({"broker_password_file": "CERT"}, "needs broker_username"),
        ({"tls_ca_file": "/nonexistent/ca.pem"}, "not a readable file"),
    ],
)
def test_half_a_login_or_certificate_is_refused(tmp_path: Path, values: dict[str, str], reason: str) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match=reason):
        load_settings(**{key: value.replace("CERT", str(cert)) for key, value in values.items()})


def test_empty_password_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "password"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        _ = load_settings(broker_username="n", broker_password_file=str(empty)).brokers
