"""The Azure Storage emulator Azurite (blob service only), started on a free loopback port for a test or a module.

``scripts/test.sh`` installs it with npm into ``.cache/azurite`` (git-ignored) when npm exists. Tests that need it
are skipped, with the reason, when neither that copy nor an ``azurite-blob`` on PATH is found.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import yarl
from azure.storage.blob import (
    AccountSasPermissions,
    ContainerSasPermissions,
    ResourceTypes,
    generate_account_sas,
    generate_container_sas,
)
from azure.storage.blob.aio import BlobServiceClient

# Azurite's documented development account (a public, well-known key, not a secret).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
LOCAL_COPY = Path(__file__).resolve().parent.parent / ".cache" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
READY_TIMEOUT_S = 30.0


def find_azurite() -> str | None:
    if LOCAL_COPY.exists():
        return str(LOCAL_COPY)
    return shutil.which("azurite-blob")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Azurite:
    port: int

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={self.account_url};"

    def container_sas_url(self, container: str, *, read: bool = True, list_: bool = True, write: bool = False) -> str:
        sas = generate_container_sas(
            ACCOUNT,
            container,
            account_key=KEY,
            permission=ContainerSasPermissions(read=read, list=list_, write=write, create=write),
            expiry=datetime.now(UTC) + timedelta(hours=1),
        )
        return f"{self.account_url}/{container}?{sas}"

    def account_sas_url(self) -> str:
        sas = generate_account_sas(
            ACCOUNT,
            KEY,
            resource_types=ResourceTypes(container=True, object=True),
            permission=AccountSasPermissions(read=True, list=True),
            expiry=datetime.now(UTC) + timedelta(hours=1),
        )
        return f"{self.account_url}?{sas}"

    async def create_container(self, name: str, blobs: dict[str, bytes]) -> None:
        async with BlobServiceClient.from_connection_string(self.connection_string) as service:
            container = await service.create_container(name)
            for blob_name, data in blobs.items():
                await container.upload_blob(blob_name, data)

    async def put_raw_blob(self, container: str, encoded_name: str, data: bytes) -> None:
        """A blob whose name the SDK would normalise away (``%2E%2E/x`` is stored as ``../x``): a hostile listing."""
        base, sas = self.container_sas_url(container, write=True).split("?", 1)
        url = yarl.URL(f"{base}/{encoded_name}?{sas}", encoded=True)
        async with (
            aiohttp.ClientSession() as session,
            session.put(url, data=data, headers={"x-ms-blob-type": "BlockBlob"}) as response,
        ):
            assert response.status == 201, await response.text()


def _argv(location: Path, port: int) -> list[str]:
    program = find_azurite()
    if program is None:
        pytest.skip("Azurite is not installed: scripts/test.sh installs it with npm when Node.js is present")
    return [
        program,
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--location",
        str(location),
        "--skipApiVersionCheck",
        "--loose",
        "--silent",
        "--disableTelemetry",
    ]


@contextmanager
def azurite_server(location: Path) -> Iterator[Azurite]:
    """Azurite for a whole module, from synchronous code (a module-scoped fixture): its tests share it, each on
    containers it only reads or names uniquely. Starting Node.js and Azurite takes one to several seconds."""
    port = _free_port()
    process = subprocess.Popen(_argv(location, port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    stdout = process.stdout
    ready = threading.Event()
    output: list[bytes] = []

    def pump() -> None:  # reads Azurite's output to its end, so that the pipe never fills up
        for line in stdout:
            output.append(line)
            if b"successfully listens" in line:
                ready.set()
        ready.set()  # at its exit too: the wait below then finds it gone

    reader = threading.Thread(target=pump, name="azurite-output", daemon=True)
    reader.start()
    try:
        if not ready.wait(READY_TIMEOUT_S) or process.poll() is not None:
            raise RuntimeError(f"azurite-blob not ready (exit status {process.poll()}): {b''.join(output)!r}")
        yield Azurite(port)
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait()
        reader.join()
        stdout.close()
