"""What a secured mosquitto needs on disk: a password file, an ACL and throw-away TLS certificates."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from node_agent.errors import BrokerToolMissing, BrokerUnavailable

OPEN = "allow_anonymous true\n"


@dataclass(frozen=True, slots=True)
class BrokerSecurity:
    """What a secured mosquitto asks of its clients: passwords (and an ACL), TLS, or both.

    ``users`` maps username to password (anonymous clients are then refused); ``acl`` is the text of a
    mosquitto ACL file (without it every authenticated client may do everything); ``tls`` serves the listener
    with a throw-away CA's certificate for 127.0.0.1 and localhost (``BrokerHandle.ca_file``).
    """

    users: Mapping[str, str] | None = None
    acl: str | None = None
    tls: bool = False
    # With tls: every client must present a certificate the throw-away CA signed (BrokerHandle.client_certificate),
    # and its common name becomes its username (for the ACL); no password is asked.
    client_certificates: bool = False


def secure_config(workdir: Path, security: BrokerSecurity) -> tuple[str, Path | None]:
    """Write the password, ACL and TLS files into ``workdir``; return the listener's config lines and the CA file."""
    lines = [OPEN]
    if security.users is not None:
        lines = ["allow_anonymous false\n", f"password_file {_password_file(workdir, security.users)}\n"]
    if security.acl is not None:
        acl = workdir / "acl"
        acl.write_text(security.acl, encoding="utf-8")
        lines.append(f"acl_file {acl}\n")
    ca_file = None
    if security.tls:
        ca_file, cert, key = _certificates(workdir)
        lines += [f"cafile {ca_file}\n", f"certfile {cert}\n", f"keyfile {key}\n"]
        if security.client_certificates:
            lines += ["require_certificate true\n", "use_identity_as_username true\n"]
            if security.users is None:
                lines = [line for line in lines if line != OPEN] + ["allow_anonymous false\n"]
    return "".join(lines), ca_file


def _tool(name: str, purpose: str) -> str:
    binary = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if binary is None:
        raise BrokerToolMissing(f"{name} is not installed (looked on PATH); it is needed for {purpose}")
    return binary


def _run_tool(argv: list[str], cwd: Path) -> None:
    done = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BrokerUnavailable(f"{' '.join(argv[:2])} failed ({done.returncode}): {done.stderr.strip()}")


def _password_file(workdir: Path, users: Mapping[str, str]) -> Path:
    """A mosquitto password file made by ``mosquitto_passwd -b`` (hashed passwords), mode 0600."""
    binary = _tool("mosquitto_passwd", "a broker with passwords (it ships with mosquitto)")
    path = workdir / "passwd"
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    for username, password in users.items():
        _run_tool([binary, "-b", str(path), username, password], workdir)
    return path


_SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
"""


def _certificates(workdir: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 and localhost, made with the openssl CLI."""
    openssl = _tool("openssl", "a broker with TLS")
    tls = workdir / "tls"
    tls.mkdir(exist_ok=True)
    (tls / "server.ext").write_text(_SERVER_EXTENSIONS, encoding="utf-8")
    ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    ca = f"req -x509 {ec} -keyout ca.key -out ca.crt -days 2"
    _run_tool([openssl, *ca.split(), "-subj", "/CN=node-agent throw-away test CA"], tls)
    _run_tool([openssl, *f"req {ec} -keyout server.key -out server.csr -subj /CN=localhost".split()], tls)
    sign = "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2"
    _run_tool([openssl, *sign.split(), "-extfile", "server.ext"], tls)
    return tls / "ca.crt", tls / "server.crt", tls / "server.key"


_CLIENT_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
"""


def client_certificate(tls: Path, name: str) -> tuple[Path, Path]:
    """``<name>.crt`` and ``<name>.key`` in the CA's directory, signed by the throw-away CA (openssl CLI)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise ValueError(f"client certificate name {name!r}: use 1-64 of [A-Za-z0-9_-]")
    openssl = _tool("openssl", "a client certificate")
    (tls / "client.ext").write_text(_CLIENT_EXTENSIONS, encoding="utf-8")
    ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    _run_tool([openssl, *f"req {ec} -keyout {name}.key -out {name}.csr -subj /CN={name}".split()], tls)
    sign = f"x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out {name}.crt -days 2"
    _run_tool([openssl, *sign.split(), "-extfile", "client.ext"], tls)
    return tls / f"{name}.crt", tls / f"{name}.key"
