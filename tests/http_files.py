"""A real loopback HTTP file server for staging tests (aiohttp.web, in the test's event loop).

Paths:
  /files/NAME                NAME from ``files`` (bytes) or ``paths`` (a file on disk, served by FileResponse);
                             ETag and Last-Modified, answering conditional requests with 304
  /status/CODE/NAME          always HTTP CODE
  /flaky/N/NAME              HTTP 500 for the first N requests of NAME, then the file
  /drop/N/NAME               the first N responses close the connection halfway through the body, then the file
  /stall/NAME                headers, a few bytes, then nothing until the server stops
  /lastmod/NAME              like /files/NAME, with Last-Modified only (no ETag)
  /chunked/NAME              the file without Content-Length (chunked), so the size is unknown beforehand
Every request is recorded in ``requests`` as (path, conditional?, status, body bytes sent).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

from aiohttp import web

LAST_MODIFIED = formatdate(1_700_000_000, usegmt=True)


@dataclass
class Served:
    path: str
    conditional: bool
    status: int
    body_bytes: int


@dataclass
class FileServer:
    files: dict[str, bytes] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    requests: list[Served] = field(default_factory=list)
    port: int = 0
    _counts: Counter[str] = field(default_factory=Counter)
    stalled: asyncio.Event = field(default_factory=asyncio.Event)  # set when a /stall/ request is being held
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def served(self, suffix: str) -> list[Served]:
        return [r for r in self.requests if r.path.endswith(suffix)]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/files/{name:.+}", self._file)
        app.router.add_get("/lastmod/{name:.+}", self._file)
        app.router.add_get("/status/{code:\\d+}/{name:.+}", self._status)
        app.router.add_get("/flaky/{n:\\d+}/{name:.+}", self._flaky)
        app.router.add_get("/drop/{n:\\d+}/{name:.+}", self._drop)
        app.router.add_get("/stall/{name:.+}", self._stall)
        app.router.add_get("/chunked/{name:.+}", self._chunked)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def _record(self, request: web.Request, status: int, body_bytes: int) -> None:
        conditional = "If-None-Match" in request.headers or "If-Modified-Since" in request.headers
        self.requests.append(Served(request.path, conditional, status, body_bytes))

    def _etag(self, name: str) -> str:
        return '"' + hashlib.sha256(self.files[name]).hexdigest()[:16] + '"'

    async def _file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name in self.paths:
            response = web.FileResponse(self.paths[name], chunk_size=1 << 20)
            self._record(request, 200, -1)  # FileResponse decides 200 or 304 itself; see test_staging_http
            return response
        if name not in self.files:
            self._record(request, 404, 0)
            raise web.HTTPNotFound()
        etag = self._etag(name)
        headers = {"ETag": etag, "Last-Modified": LAST_MODIFIED}
        if request.path.startswith("/lastmod/"):
            del headers["ETag"]
        if request.headers.get("If-None-Match") == etag or (
            "If-None-Match" not in request.headers and request.headers.get("If-Modified-Since") == LAST_MODIFIED
        ):
            self._record(request, 304, 0)
            return web.Response(status=304, headers=headers)
        self._record(request, 200, len(self.files[name]))
        return web.Response(body=self.files[name], headers=headers)

    async def _status(self, request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        self._record(request, code, 0)
        return web.Response(status=code, text=f"status {code}\n")

    async def _flaky(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self._counts[request.path] += 1
        if self._counts[request.path] <= int(request.match_info["n"]):
            self._record(request, 500, 0)
            return web.Response(status=500, text="try again\n")
        return await self._file_named(request, name)

    async def _file_named(self, request: web.Request, name: str) -> web.Response:
        self._record(request, 200, len(self.files[name]))
        return web.Response(body=self.files[name], headers={"ETag": self._etag(name)})

    async def _drop(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self._counts[request.path] += 1
        if self._counts[request.path] > int(request.match_info["n"]):
            return await self._file_named(request, name)
        body = self.files[name]
        response = web.StreamResponse(headers={"Content-Length": str(len(body))})
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        self._record(request, 200, len(body) // 2)
        assert request.transport is not None
        request.transport.close()  # the connection drops mid-body
        return response

    async def _stall(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"x" * 10)
        self._record(request, 200, 10)
        self.stalled.set()
        await self._stopping.wait()  # never more: the client's read timeout must fire
        return response

    async def _chunked(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        sent = 0
        with self.paths[name].open("rb") as source:
            while block := source.read(1 << 20):
                await response.write(block)
                sent += len(block)
        self._record(request, 200, sent)
        await response.write_eof()
        return response
