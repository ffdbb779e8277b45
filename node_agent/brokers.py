"""Throw-away loopback MQTT brokers (mosquitto or the embedded amqtt) started for demos and tests."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote

from node_agent.broker_security import OPEN, BrokerSecurity, client_certificate, secure_config
from node_agent.errors import BrokerToolMissing, BrokerUnavailable
from node_agent.lifeline import die_with_parent

__all__ = [  # BrokerSecurity, secure_config and the errors live in their own modules; importable from here too
    "HOST",
    "KINDS",
    "BrokerHandle",
    "BrokerSecurity",
    "BrokerToolMissing",
    "BrokerUnavailable",
    "LaunchSpec",
    "OutputPump",
    "START_ATTEMPTS",
    "broker_url",
    "find_mosquitto",
    "free_port",
    "launch",
    "running_broker",
    "secure_config",
    "stop_process",
]

HOST = "127.0.0.1"
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
KINDS = ("mosquitto", "amqtt")

_MOSQUITTO_READY = re.compile(r"mosquitto version \S+ running")
START_ATTEMPTS = 3  # a fresh port is tried only when the previous one was taken in the meantime
_PUMP_JOIN_TIMEOUT_S = 2.0

# max_queued_messages 100000 (default 1000) is what keeps bursts of QoS 1 messages for a slow or offline
# persistent client from being dropped; max_queued_bytes 0 keeps the byte cap off; max_inflight_messages 0
# (default 20) removes the per-client window, so a burst is written at once instead of 20 per PUBACK.
_MOSQUITTO_CONF = """\
listener {port} {host}
{security}set_tcp_nodelay true
{persistence}
max_inflight_messages 0
max_queued_messages 100000
max_queued_bytes 0
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
log_timestamp_format %Y-%m-%dT%H:%M:%S
"""


@dataclass(frozen=True, slots=True)
class BrokerHandle:
    """A started broker: where to connect and which implementation it is.

    A clustered broker (``kind="nats-cluster"``) has one MQTT listener per cluster node: ``url`` lists them all,
    comma-separated, as ``NODE_AGENT_BROKER_URL`` takes them; ``port`` is the first and ``ports`` all of them.
    """

    url: str
    port: int
    kind: str
    ca_file: Path | None = None
    cluster_ports: tuple[int, ...] = ()

    @property
    def ports(self) -> tuple[int, ...]:
        """The MQTT port of every node of the broker: one for a single broker."""
        return self.cluster_ports or (self.port,)

    def client_certificate(self, name: str) -> tuple[Path, Path]:
        """A client certificate with common name ``name`` and its key, signed by this broker's throw-away CA."""
        if self.ca_file is None:
            raise ValueError("this broker has no TLS, so no CA to sign a client certificate")
        return client_certificate(self.ca_file.parent, name)

    def url_for(self, username: str, password: str) -> str:
        """This broker's URL with a login in it: ``mqtt[s]://user:password@127.0.0.1:port``."""
        return broker_url(self.port, tls=self.ca_file is not None, username=username, password=password)


def broker_url(port: int, *, tls: bool = False, username: str | None = None, password: str | None = None) -> str:
    """``mqtt://`` (``mqtts://`` for TLS) on the loopback address, with the login percent-encoded if given."""
    login = ""
    if username is not None:
        login = quote(username, safe="") + (f":{quote(password, safe='')}" if password is not None else "") + "@"
    return f"{'mqtts' if tls else 'mqtt'}://{login}{HOST}:{port}"


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """How to start one broker process and recognise that it accepts connections."""

    argv: list[str]
    log_path: Path
    is_ready: Callable[[str], bool]
    env: dict[str, str] | None = None


def find_mosquitto() -> str | None:
    """Return the mosquitto executable on PATH, or None (Debian installs it in /usr/sbin)."""
    return shutil.which("mosquitto")


def free_port() -> int:
    """Return a TCP port on the loopback address that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class OutputPump:
    """Copies a child's merged output into a log file and hands lines to the readiness wait."""

    def __init__(self, stream: IO[str], log_path: Path) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._watching = threading.Event()
        self._watching.set()
        self._thread = threading.Thread(
            target=self._run, args=(stream, log_path), name=f"broker-log-{log_path.stem}", daemon=True
        )
        self._thread.start()

    def _run(self, stream: IO[str], log_path: Path) -> None:
        with stream, log_path.open("a", encoding="utf-8") as log:
            for line in stream:
                log.write(line)
                log.flush()
                if self._watching.is_set():
                    self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, is_ready: Callable[[str], bool], timeout: float) -> tuple[bool, str]:
        """Block until a line satisfies is_ready, output ends, or timeout; return (ready, output so far)."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    line = self._lines.get(timeout=remaining)
                except queue.Empty:
                    break
                if line is None:
                    break
                seen.append(line)
                if is_ready(line):
                    return True, "".join(seen)
            return False, "".join(seen)
        finally:
            self._watching.clear()

    def join(self) -> None:
        """Wait briefly for the copy to finish once the child has exited."""
        self._thread.join(_PUMP_JOIN_TIMEOUT_S)


def _persistence(workdir: Path | None) -> str:
    """Mosquitto's on-disk store in ``workdir`` (retained messages, persistent sessions and their queued
    messages survive a restart), or none. It is written when the broker stops (SIGTERM) and every 30 minutes:
    saving at every change would stall a busy broker, so a broker killed with SIGKILL loses what changed since."""
    if workdir is None:
        return "persistence false"
    return f"persistence true\npersistence_location {workdir}/"


def _mosquitto_spec(workdir: Path, port: int, security: str = OPEN, persistence: Path | None = None) -> LaunchSpec:
    binary = find_mosquitto()
    if binary is None:
        raise BrokerToolMissing(
            "mosquitto is not installed (looked on PATH; Debian installs it in /usr/sbin); "
            "install it with `apt-get install mosquitto`, or use the embedded broker (kind='amqtt')"
        )
    if os.geteuid() == 0:
        # As root mosquitto would become user "mosquitto": it could not read our 0700 workdir, and the change of
        # user would clear the parent-death signal that stops it when the demo or test run dies.
        security += "user root\n"
    conf = workdir / "mosquitto.conf"
    text = _MOSQUITTO_CONF.format(port=port, host=HOST, security=security, persistence=_persistence(persistence))
    conf.write_text(text, encoding="utf-8")
    return LaunchSpec(
        argv=[binary, "-c", str(conf)],
        log_path=workdir / "mosquitto.log",
        is_ready=lambda line: _MOSQUITTO_READY.search(line) is not None,
    )


def _amqtt_spec(workdir: Path, port: int) -> LaunchSpec:
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return LaunchSpec(
        argv=[sys.executable, "-m", "node_agent.embedded_broker", "--port", str(port)],
        log_path=workdir / "amqtt.log",
        is_ready=lambda line: line.strip() == "ready",
        env=env,
    )


def stop_process(proc: subprocess.Popen[str], pump: OutputPump) -> None:
    """SIGTERM the child, SIGKILL it if it is still alive after STOP_TIMEOUT_S, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    pump.join()


def launch(spec: LaunchSpec) -> tuple[subprocess.Popen[str], OutputPump]:
    try:
        proc = subprocess.Popen(
            spec.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=spec.env,
            start_new_session=True,  # a terminal Ctrl-C reaches the agent only; the broker is stopped last
            preexec_fn=die_with_parent,  # a killed demo or test run leaves no broker behind
        )
    except OSError as exc:
        raise BrokerUnavailable(f"cannot execute {spec.argv[0]}: {exc}") from exc
    assert proc.stdout is not None
    return proc, OutputPump(proc.stdout, spec.log_path)


def _start(
    kind: str, workdir: Path, fixed_port: int | None, security: str = OPEN, persistence: Path | None = None
) -> tuple[subprocess.Popen[str], OutputPump, int]:
    """Start the broker on ``fixed_port`` or a free port and wait (bounded) for its readiness line."""
    for _ in range(1 if fixed_port else START_ATTEMPTS):
        port = fixed_port or free_port()
        if kind == "mosquitto":
            spec = _mosquitto_spec(workdir, port, security, persistence)
        else:
            spec = _amqtt_spec(workdir, port)
        proc, pump = launch(spec)
        try:
            ready, output = pump.wait_for(spec.is_ready, READY_TIMEOUT_S)
        except BaseException:  # e.g. Ctrl-C while waiting: never leave the child behind
            stop_process(proc, pump)
            raise
        if ready:
            return proc, pump, port
        stop_process(proc, pump)
        if "address already in use" not in output.lower():
            break
    raise BrokerUnavailable(
        f"{kind} broker on {HOST}:{port} did not report readiness within {READY_TIMEOUT_S:g} s "
        f"(exit code {proc.returncode}); its output was:\n{output}"
    )


def _resolve_kind(kind: str | None, security: BrokerSecurity | None) -> str:
    if security is not None:
        if kind not in (None, "mosquitto") or find_mosquitto() is None:
            raise BrokerToolMissing(
                "a broker with passwords, an ACL or TLS needs mosquitto (`apt-get install mosquitto`; Debian "
                "installs it in /usr/sbin); the embedded amqtt broker is not set up for them"
            )
        return "mosquitto"
    if kind is None:
        return "mosquitto" if find_mosquitto() else "amqtt"
    if kind not in KINDS:
        raise ValueError(f"unknown broker kind {kind!r}; expected one of {', '.join(KINDS)} or None")
    return kind


@contextlib.contextmanager
def running_broker(
    workdir: Path,
    *,
    kind: str | None = None,
    port: int | None = None,
    security: BrokerSecurity | None = None,
    persistence: Path | None = None,
) -> Iterator[BrokerHandle]:
    """Run a loopback broker for the duration of the block; kind=None prefers mosquitto over amqtt.

    ``port`` restarts a broker where an earlier one listened (tests of reconnection); default: a free port.
    ``security`` (mosquitto only) adds passwords, an ACL and TLS; the files it needs are made in ``workdir``.
    ``persistence`` (mosquitto only): a folder for its store, so a broker started again on it keeps retained
    messages and persistent sessions.
    """
    resolved = _resolve_kind(kind, security)
    workdir.mkdir(parents=True, exist_ok=True)
    conf, ca_file = (OPEN, None) if security is None else secure_config(workdir, security)
    proc, pump, port = _start(resolved, workdir, port, conf, persistence)
    try:
        yield BrokerHandle(url=broker_url(port, tls=ca_file is not None), port=port, kind=resolved, ca_file=ca_file)
    finally:
        stop_process(proc, pump)
