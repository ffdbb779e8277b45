"""Creating, finding and deleting the Linux accounts of task users (useradd/userdel as asyncio subprocesses)."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
from dataclasses import dataclass

import psutil
import structlog

from node_agent.identity.names import is_valid_user_name

log = structlog.get_logger(__name__)

_TOOL_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"
_ATTEMPTS = 5  # useradd/userdel exit 10 when another process holds the lock on /etc/passwd: try again
_FIRST_BACKOFF_S = 0.05
_USERADD_EXISTS = 9
_USERDEL_UNKNOWN = 6
_USERDEL_BUSY = 8
_LOCKED = 10


class AccountError(Exception):
    """An account could not be created or deleted; the message says what the tool answered."""


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    comment: str = ""


def _account(entry: pwd.struct_passwd) -> Account:
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_gecos)


def lookup(name: str) -> Account | None:
    """The account called ``name``, or None (blocking: NSS may read files or ask a directory service)."""
    try:
        return _account(pwd.getpwnam(name))
    except KeyError:
        return None


def lookup_uid(uid: int) -> Account | None:
    try:
        return _account(pwd.getpwuid(uid))
    except KeyError:
        return None


def find_marked(comment_prefix: str) -> list[Account]:
    """Every local account whose comment starts with ``comment_prefix`` (the agent's own, found again)."""
    return [_account(entry) for entry in pwd.getpwall() if entry.pw_gecos.startswith(comment_prefix)]


def _tool(name: str) -> str:
    path = shutil.which(name, path=_TOOL_PATH)
    if path is None:
        raise AccountError(f"{name} is not installed (looked in {_TOOL_PATH}); install the passwd package")
    return path


async def _run(argv: list[str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": _TOOL_PATH, "LANG": "C"},
    )
    _, err = await proc.communicate()
    return proc.returncode or 0, err.decode(errors="replace").strip()


async def _run_locked(argv: list[str]) -> tuple[int, str]:
    """Run a shadow-utils tool, again after a short wait while /etc/passwd is locked by someone else."""
    delay = _FIRST_BACKOFF_S
    for _ in range(_ATTEMPTS - 1):
        code, err = await _run(argv)
        if code != _LOCKED:
            return code, err
        await asyncio.sleep(delay)  # a back-off against another process's lock, not a synchronisation
        delay *= 2
    return await _run(argv)


async def create(name: str, comment: str) -> Account:
    """Create an unprivileged account (own group, no home, no login shell); an existing one is returned."""
    if not is_valid_user_name(name):
        raise AccountError(f"{name!r} is not a valid user name")
    shell = shutil.which("nologin", path=_TOOL_PATH) or "/bin/false"
    argv = [_tool("useradd"), "--comment", comment, "--no-create-home", "--home-dir", "/nonexistent"]
    argv += ["--shell", shell, "--user-group", name]
    code, err = await _run_locked(argv)
    account = await asyncio.to_thread(lookup, name)
    if account is None or code not in (0, _USERADD_EXISTS):
        raise AccountError(f"useradd {name} failed (exit {code}): {err or 'no message'}")
    if code == 0:
        log.info("identity.user_created", user=name, uid=account.uid)
    return account


def kill_processes(uid: int) -> int:
    """SIGKILL every process running as ``uid`` (a daemon a task left behind); blocking; returns the count."""
    killed = 0
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info.get("uids")
        if uids is not None and uid in (uids.real, uids.effective) and proc.pid != os.getpid():
            try:
                proc.send_signal(signal.SIGKILL)
                killed += 1
            except psutil.Error:
                pass
    return killed


async def delete(account: Account) -> None:
    """Delete the account and its group, first killing what still runs as it; a missing account is fine."""
    argv = [_tool("userdel"), account.name]
    for _ in range(3):
        killed = await asyncio.to_thread(kill_processes, account.uid)
        code, err = await _run_locked(argv)
        if code in (0, _USERDEL_UNKNOWN):
            log.info("identity.user_deleted", user=account.name, uid=account.uid, processes_killed=killed)
            return
        if code != _USERDEL_BUSY:
            break
    raise AccountError(f"userdel {account.name} failed (exit {code}): {err or 'no message'}")
