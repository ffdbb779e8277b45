"""AgentSettings: PROTOCOL.md's "Running an agent" table and a few more, from TOML and NODE_AGENT_* variables."""

from __future__ import annotations

import os
import shlex
import socket
import tomllib
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from node_agent.errors import ConfigError
from node_agent.ids import Id, sanitize_id


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @property
    def netloc(self) -> str:
        """``host:port``, without the login: what logs and NodeState's ``broker`` show."""
        return f"{self.host}:{self.port}"


def parse_broker_urls(value: str) -> list[BrokerAddress]:
    """Parse ``mqtt://[user:password@]host[:port]`` (comma-separated for a clustered broker)."""
    addresses = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        url = urlsplit(item)
        if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
            shown = item.replace(f":{url.password}@", ":***@") if url.password else item  # never echo a password
            raise ValueError(f"broker url {shown!r} is invalid: use mqtt://host[:port] or mqtts://host[:port]")
        tls = url.scheme == "mqtts"
        addresses.append(
            BrokerAddress(
                host=url.hostname,
                port=url.port or (8883 if tls else 1883),
                tls=tls,
                username=unquote(url.username) if url.username else None,
                password=unquote(url.password) if url.password else None,
            )
        )
    if not addresses:
        raise ValueError("no broker url given")
    return addresses


def read_password_file(path: Path) -> str:
    """The password: the file's first line, without its line ending (blocking; read once at start)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the broker password file {path}: {exc}") from exc
    if not lines or not lines[0]:
        raise ConfigError(f"the broker password file {path} is empty: put the password on its first line")
    return lines[0]


def with_login(addresses: list[BrokerAddress], username: str | None, password_file: Path | None) -> list[BrokerAddress]:
    """Give every address without a login of its own ``username`` and the password in ``password_file``."""
    if username is None:
        return addresses
    password = read_password_file(password_file) if password_file is not None else None
    return [
        address if address.username is not None else replace(address, username=username, password=password)
        for address in addresses
    ]


class AgentSettings(BaseSettings):
    """Resolved once at start and passed down; the environment wins over the TOML file."""

    model_config = SettingsConfigDict(env_prefix="NODE_AGENT_", extra="forbid", frozen=True)

    broker_url: str = "mqtt://127.0.0.1:1883"
    topic_prefix: str = Field(default="batch", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    node_id: Id = Field(default_factory=lambda: sanitize_id(socket.gethostname()))
    pool_id: Id = "default"
    root: Path = Path("/var/lib/node-agent")
    state_dir: Path | None = None
    task_slots: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256)
    boot_id_file: Path = Path("/proc/sys/kernel/random/boot_id")
    retention_sweep_interval: timedelta = timedelta(minutes=1)
    disk_free_threshold_bytes: int = Field(default=1 << 30, ge=0)
    disk_free_probe_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    broker_username: str | None = Field(default=None, min_length=1, max_length=256)
    broker_password_file: Path | None = None
    heartbeat_interval: timedelta = timedelta(seconds=30)
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    shutdown_grace: timedelta = timedelta(seconds=10)
    tasks_on_stop: Literal["keep", "handback"] = "keep"  # ADR 0011: keep = left to their supervisors, adopted
    job_wait: timedelta = timedelta(seconds=10)
    start_task: dict[str, Any] | None = None  # a StartTask (JSON in the variable, a table in TOML); checked at start
    allow_reboot: bool = False
    reboot_command: str = "systemctl reboot"
    auto_storage_url: str | None = None
    staging_cache_dir: Path | None = None
    staging_cache_max_bytes: int = Field(default=8 << 30, ge=0)
    staging_concurrency: int = Field(default=4, ge=1, le=64)
    staging_connect_timeout: timedelta = timedelta(seconds=30)
    staging_read_timeout: timedelta = timedelta(seconds=60)
    staging_retries: int = Field(default=4, ge=0, le=20)
    staging_retry_delay: timedelta = timedelta(seconds=0.5)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"

    @field_validator("broker_url")
    @classmethod
    def _valid_broker_url(cls, value: str) -> str:
        parse_broker_urls(value)
        return value

    @field_validator("auto_storage_url")
    @classmethod
    def _valid_storage_url(cls, value: str | None) -> str | None:
        if value is not None and (urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname):
            raise ValueError("must be an http(s) URL of a blob storage account, with its SAS query if it needs one")
        return value

    @field_validator(
        "root",
        "state_dir",
        "boot_id_file",
        "disk_free_probe_file",
        "tls_ca_file",
        "tls_cert_file",
        "tls_key_file",
        "broker_password_file",
        "staging_cache_dir",
    )
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return value.absolute() if value is not None else None

    @field_validator("reboot_command")
    @classmethod
    def _splittable(cls, value: str) -> str:
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot be split into words: {exc}") from None
        if not words:
            raise ValueError("must name a program")
        return value

    @field_validator("tls_ca_file", "tls_cert_file", "tls_key_file", "broker_password_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not os.access(value, os.R_OK):
            raise ValueError(f"{value} is not a readable file")
        return value

    @model_validator(mode="after")
    def _login_and_certificate_pairs(self) -> AgentSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        if self.broker_password_file is not None and self.broker_username is None:
            raise ValueError("broker_password_file needs broker_username")
        return self

    @field_validator("retention_sweep_interval", "staging_connect_timeout", "staging_read_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be more than zero")
        return value

    @property
    def brokers(self) -> list[BrokerAddress]:
        """The broker URLs, with broker_username and the password file's first line where a URL has no login."""
        return with_login(parse_broker_urls(self.broker_url), self.broker_username, self.broker_password_file)

    @property
    def resolved_state_dir(self) -> Path:
        return self.state_dir or self.root.parent / "node-agent-state"

    @property
    def resolved_staging_cache_dir(self) -> Path:
        return self.staging_cache_dir or self.resolved_state_dir / "staging-cache"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: a NODE_AGENT_* variable wins over the TOML file (passed as init values).
        return (env_settings, init_settings)


def load_settings(config_file: Path | None = None, **overrides: Any) -> AgentSettings:
    """Read the TOML file (if any) and the environment; raise ConfigError with a one-line reason."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            values = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
    values.update(overrides)
    try:
        return AgentSettings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        variable = f" (NODE_AGENT_{where.upper()})" if where in AgentSettings.model_fields else ""
        raise ConfigError(f"invalid setting {where}{variable}: {first['msg']}") from exc
