"""A pool of real agent processes on this machine, each with its own node root: for the demo and tests."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from node_agent.lifeline import die_with_parent
from node_agent.wire.base import utcnow

STOP_TIMEOUT_S = 30.0


@dataclass(eq=False)
class LocalAgent:
    """One ``node-agent run`` process; its settings are NODE_AGENT_* variables, as an operator would set them."""

    node_id: str
    base: Path
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    started_at: datetime = field(default_factory=utcnow)

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def state_dir(self) -> Path:
        return self.base / "state"

    @property
    def disk_free_file(self) -> Path:
        return self.base / "disk_free_bytes"

    @property
    def boot_id_file(self) -> Path:
        return self.base / "boot_id"

    @property
    def log_file(self) -> Path:
        return self.base / "agent.log"

    async def start(self) -> None:
        if self.process is not None and self.process.returncode is None:
            raise RuntimeError(f"agent {self.node_id} is already running")
        self.started_at = utcnow()
        log = await asyncio.to_thread(open, self.log_file, "ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "node_agent",
                "run",
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=die_with_parent,  # SIGTERM (a clean stop) if the demo or test run dies
            )
        finally:
            log.close()

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait for the exit status (SIGKILL if it does not stop within ``timeout_s``)."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            return proc.returncode if proc is not None and proc.returncode is not None else 0
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout_s):
                return await proc.wait()
        except TimeoutError:
            proc.kill()
            return await proc.wait()

    async def kill(self) -> int:
        """SIGKILL: the agent dies without a word (its last will says offline)."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            return 0
        proc.kill()
        return await proc.wait()

    def set_boot_id(self, boot_id: str) -> None:
        """The boot id the next start reads: a new one is what a node reboot looks like to the agent."""
        self.boot_id_file.write_text(boot_id + "\n")


def agent_env(
    broker_url: str,
    prefix: str,
    node_id: str,
    base: Path,
    task_slots: int,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("NODE_AGENT_")}
    env.update(
        {
            "NODE_AGENT_BROKER_URL": broker_url,
            "NODE_AGENT_TOPIC_PREFIX": prefix,
            "NODE_AGENT_NODE_ID": node_id,
            "NODE_AGENT_POOL_ID": "pool1",
            "NODE_AGENT_ROOT": str(base / "root"),
            "NODE_AGENT_STATE_DIR": str(base / "state"),
            "NODE_AGENT_BOOT_ID_FILE": str(base / "boot_id"),
            "NODE_AGENT_TASK_SLOTS": str(task_slots),
            "NODE_AGENT_SHUTDOWN_GRACE": "PT5S",
            # Absent until a test writes a free byte count into it (FakeNode.disk_full): measured till then.
            "NODE_AGENT_DISK_FREE_PROBE_FILE": str(base / "disk_free_bytes"),
        }
    )
    env.update(extra or {})
    return env


def make_searchable(folder: Path) -> None:
    """Let task users (other users than root) reach a node root made under the temporary directory.

    Temporary directories (pytest's, ``tempfile``'s) are 0700; an agent running as root refuses a node root task
    users cannot reach. Only directories inside the temporary directory that we own get o+x (never a listing).
    """
    temp = Path(tempfile.gettempdir()).resolve()
    for directory in (folder.resolve(), *folder.resolve().parents):
        if directory == temp or not directory.is_relative_to(temp):
            break
        info = directory.stat()
        if info.st_uid == os.geteuid() and not info.st_mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXOTH)


def make_agent(
    broker_url: str,
    prefix: str,
    base: Path,
    number: int,
    *,
    task_slots: int = 1,
    extra: Mapping[str, str] | None = None,
) -> LocalAgent:
    """Agent ``node<number>`` (not started) with its node root, state and boot id file under ``base``."""
    node_id = f"node{number}"
    folder = base / node_id
    folder.mkdir(parents=True, exist_ok=True)
    make_searchable(folder)
    agent = LocalAgent(node_id, folder, agent_env(broker_url, prefix, node_id, folder, task_slots, extra))
    agent.set_boot_id("boot-1")
    return agent


def make_agents(
    broker_url: str,
    prefix: str,
    base: Path,
    count: int,
    *,
    task_slots: int = 1,
    extra: Mapping[str, str] | None = None,
) -> list[LocalAgent]:
    """Agents ``node1`` .. ``node<count>``, not started."""
    return [
        make_agent(broker_url, prefix, base, number, task_slots=task_slots, extra=extra)
        for number in range(1, count + 1)
    ]
