"""Blob containers: listing a container URL (SAS or public) by prefix, and each blob's own download URL.

azure-storage-blob (about 40 MB with azure-core and aiohttp) is imported by the first listing, not with this module:
most agents never see a container among their resource files.
"""

from __future__ import annotations

import asyncio
import importlib
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from node_agent.errors import StagingFailed
from node_agent.staging.http import HttpOptions, shown_url


@dataclass(frozen=True, slots=True)
class Blob:
    name: str
    url: str  # the container URL's query (its SAS) included


def container_url(account_url: str, container: str) -> str:
    """``autoStorageContainerName`` against the configured account URL; the account's SAS query is kept."""
    parts = urlsplit(account_url)
    path = f"{parts.path.rstrip('/')}/{quote(container, safe='')}"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def blob_url(container: str, name: str) -> str:
    parts = urlsplit(container)
    path = f"{parts.path.rstrip('/')}/{quote(name, safe='/')}"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


async def list_blobs(url: str, prefix: str | None, options: HttpOptions) -> list[Blob]:
    """Every blob of the container whose name starts with ``prefix``; failures become Azure's codes."""
    await asyncio.to_thread(importlib.import_module, "azure.storage.blob.aio")  # the first time: a long import
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceRequestTimeoutError,
        ServiceResponseError,
        ServiceResponseTimeoutError,
    )
    from azure.storage.blob.aio import ContainerClient

    shown = shown_url(url)
    try:
        async with ContainerClient.from_container_url(
            url,
            retry_total=options.retries,
            retry_backoff_factor=options.retry_delay_s,
            connection_timeout=options.connect_timeout_s,
            read_timeout=options.read_timeout_s,
        ) as client:
            names = [blob.name async for blob in client.list_blobs(name_starts_with=prefix or None)]
    except ResourceNotFoundError as exc:
        raise StagingFailed("BlobNotFound", f"the container {shown} does not exist") from exc
    except ClientAuthenticationError as exc:
        raise StagingFailed("BlobAccessDenied", f"listing the container {shown} was denied") from exc
    except HttpResponseError as exc:
        if exc.status_code in (401, 403):
            raise StagingFailed("BlobAccessDenied", f"listing the container {shown} was denied") from exc
        raise StagingFailed(
            "BlobDownloadMiscError", f"listing the container {shown} failed with HTTP {exc.status_code}"
        ) from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        timed_out = isinstance(exc, ServiceRequestTimeoutError | ServiceResponseTimeoutError)
        code = "BlobDownloadTimedOut" if timed_out else "BlobDownloadMiscError"
        raise StagingFailed(code, f"listing the container {shown} failed: {type(exc).__name__}") from exc
    except ValueError as exc:
        raise StagingFailed("BlobDownloadMiscError", f"the container URL {shown} is invalid: {exc}") from exc
    return [Blob(name, blob_url(url, name)) for name in names]
