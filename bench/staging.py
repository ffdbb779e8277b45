"""Resource file staging against curl: a generated 1 GiB file served on loopback, downloaded by both.

    python bench/staging.py [--size-mib 1024] [--runs 3] [--dir DIR]

Prints, in one run: curl's throughput, the agent's (``Stager.stage`` as an agent runs it: with the node cache,
written to the cache's file, fsynced, and to the task's file at once; and without a cache, to the task's file),
their ratio, the agent process's peak RSS growth, and a second staging of the same URL (a cache hit) with the
body bytes the server sent for it. The server (aiohttp's FileResponse, sendfile) and the agent each run in their
own process, so neither measures the other. Figures are medians over ``--runs``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MIB = 1 << 20


# -- the server process --------------------------------------------------------------------------------------


def serve(path: Path) -> None:
    from aiohttp import web

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/file", lambda _: web.FileResponse(path, chunk_size=4 * MIB))
        runner = web.AppRunner(app, access_log_format="%s %b")
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        print(f"port {site._server.sockets[0].getsockname()[1]}", flush=True)  # type: ignore[attr-defined]
        await asyncio.Event().wait()

    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    asyncio.run(main())


# -- the agent process ---------------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def agent(url: str, folder: Path, use_cache: bool) -> None:
    """One staging of ``url`` (a miss), then a second one (a hit with the cache); prints the figures as JSON."""
    from node_agent.log import configure_logging
    from node_agent.staging.stage import Source, Stager, StagingOptions

    configure_logging("warning")

    async def main() -> dict[str, Any]:
        options = StagingOptions(cache_dir=folder / "cache", cache_max_bytes=(8 << 30) if use_cache else 0)
        async with Stager(options) as stager:
            source = [Source(http_url=url, file_path="data.bin")]
            before = rss_bytes()  # imports done, session open: what staging itself adds is measured
            cpu = _cpu_s(resource.RUSAGE_SELF)
            started = time.perf_counter()
            miss = await stager.stage(source, _fresh(folder / "wd-a"))
            miss_s = time.perf_counter() - started
            miss_cpu_s = _cpu_s(resource.RUSAGE_SELF) - cpu
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            started = time.perf_counter()
            hit = await stager.stage(source, _fresh(folder / "wd-b"))
            hit_s = time.perf_counter() - started
        return {
            "miss_s": miss_s,
            "miss_bytes": miss.bytes_downloaded,
            "miss_cpu_s": miss_cpu_s,
            "hit_s": hit_s,
            "hit_bytes_downloaded": hit.bytes_downloaded,
            "hit_cache_hits": hit.cache_hits,
            "rss_before": before,
            "rss_peak": peak,
        }

    print(json.dumps(asyncio.run(main())), flush=True)


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _fresh(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# -- the driver ----------------------------------------------------------------------------------------------


def generate(path: Path, size: int) -> None:
    """Sparse, with random MiBs at both ends: quick to make, nothing committed, and sendfile serves it fast."""
    with path.open("wb") as out:
        out.write(os.urandom(MIB))
        out.seek(size - MIB)
        out.write(os.urandom(MIB))


def run_curl(url: str, dest: Path) -> tuple[float, float]:
    """Seconds and CPU seconds (user + system) of one curl download."""
    cpu = _cpu_s(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(["curl", "-sS", "--fail", "-o", str(dest), url], check=True)  # noqa: S603 S607
    return time.perf_counter() - started, _cpu_s(resource.RUSAGE_CHILDREN) - cpu


def run_agent(url: str, folder: Path, *, use_cache: bool) -> dict[str, Any]:
    mode = "--agent-cache" if use_cache else "--agent-direct"
    out = subprocess.run(  # noqa: S603
        [sys.executable, __file__, mode, url, str(folder)], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def measure(url: str, work: Path, size: int, runs: int) -> dict[str, list[Any]]:
    figures: dict[str, list[Any]] = {"curl": [], "curl_cpu": [], "cache": [], "direct": []}
    for run in range(runs):
        dest = work / f"curl-{run}.bin"
        seconds, cpu_s = run_curl(url, dest)
        figures["curl"].append(size / seconds / MIB)
        figures["curl_cpu"].append(cpu_s / (size / 2**30))
        dest.unlink()
        for name, use_cache in (("cache", True), ("direct", False)):
            folder = work / f"{name}-{run}"
            figures[name].append(run_agent(url, folder, use_cache=use_cache))
            shutil.rmtree(folder)
    return figures


def report(figures: dict[str, list[Any]], size: int, access_log: Path) -> None:
    curl = statistics.median(figures["curl"])
    cached = figures["cache"]
    direct = figures["direct"]
    agent_cache = statistics.median(size / f["miss_s"] / MIB for f in cached)
    agent_direct = statistics.median(size / f["miss_s"] / MIB for f in direct)
    cpu = {
        "curl": statistics.median(figures["curl_cpu"]),
        "direct": statistics.median(f["miss_cpu_s"] / (size / 2**30) for f in direct),
        "cache": statistics.median(f["miss_cpu_s"] / (size / 2**30) for f in cached),
    }
    growth = max(f["rss_peak"] - f["rss_before"] for f in cached + direct)
    hit_s = statistics.median(f["hit_s"] for f in cached)
    statuses = [line.split() for line in access_log.read_text().splitlines() if line[:3].isdigit()]
    not_modified = [int(b) for s, b in statuses if s == "304"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {_curl()}")
    print(f"file: {size // MIB} MiB on loopback, {len(figures['curl'])} runs, medians")
    print(f"load average (1 min) after the runs: {os.getloadavg()[0]:.1f}; CPU seconds are user + system per GiB")
    print(f"curl -o FILE                          {curl:8.0f} MiB/s                    {cpu['curl']:5.2f} CPU s/GiB")
    print(
        f"agent, no cache (download + fsync)    {agent_direct:8.0f} MiB/s   {agent_direct / curl:6.1%} of curl"
        f"   {cpu['direct']:5.2f} CPU s/GiB"
    )
    print(
        f"agent, cache miss (cache + task file) {agent_cache:8.0f} MiB/s   {agent_cache / curl:6.1%} of curl"
        f"   {cpu['cache']:5.2f} CPU s/GiB"
    )
    print(f"agent peak RSS growth                 {growth / MIB:8.1f} MiB")
    hits = [f["hit_bytes_downloaded"] for f in cached]
    print(
        f"cache hit: {hit_s * 1000:.0f} ms, body bytes downloaded {hits}, "
        f"server answered {len(not_modified)} conditional GETs with 304, sending {sum(not_modified)} bytes "
        "in all (headers; no body)"
    )


def _curl() -> str:
    out = subprocess.run(["curl", "--version"], check=True, capture_output=True, text=True).stdout  # noqa: S607
    return " ".join(out.split()[:2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where files are written (default: a temp dir)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--agent-cache", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--agent-direct", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    if args.agent_cache or args.agent_direct:
        url, folder = args.agent_cache or args.agent_direct
        return agent(url, Path(folder), use_cache=bool(args.agent_cache))
    if shutil.which("curl") is None:
        sys.exit("bench/staging.py needs curl on PATH")
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="staging-bench-") as tmp:
        work = Path(tmp)
        source = work / "served.bin"
        generate(source, size)
        access_log = work / "access.log"
        with access_log.open("w") as log_file:
            server = subprocess.Popen(  # noqa: S603
                [sys.executable, __file__, "--serve", str(source)], stdout=subprocess.PIPE, stderr=log_file, text=True
            )
            try:
                assert server.stdout is not None
                port = int(server.stdout.readline().split()[1])
                figures = measure(f"http://127.0.0.1:{port}/file", work, size, args.runs)
            finally:
                server.terminate()
                server.wait()
        report(figures, size, access_log)


if __name__ == "__main__":
    main()
