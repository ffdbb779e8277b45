"""Prometheus metrics of one agent, and the optional endpoint that serves them (``metrics_port``).

Other modules count through the objects here, e.g. ``metrics.staging_bytes.inc(n)`` after a download,
``metrics.staging_cache_hits.inc()`` on a cache hit. Everything lives in ``REGISTRY``, not prometheus-client's
global one, so the endpoint shows this agent's figures and nothing a library registered.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from node_agent.ops.figures import measure_node

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

TASK_STATES = ("active", "preparing", "running", "completed")
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, float("inf"))

tasks = Gauge("node_agent_tasks", "Tasks held by this node, by state", ["state"], registry=REGISTRY)
tasks_completed = Counter(
    "node_agent_tasks_completed", "Tasks completed on this node, by result", ["result"], registry=REGISTRY
)
task_duration = Histogram(
    "node_agent_task_duration_seconds", "Task run time, all attempts", ["result"], buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)  # fmt: skip
subtask_duration = Histogram(
    "node_agent_subtask_duration_seconds",
    "Job preparation and release task run time, by kind (preparation, release) and result",
    ["kind", "result"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
command_duration = Histogram(
    "node_agent_command_duration_seconds",
    "Time from a command's arrival to its reply, by command type and outcome (ok, error)",
    ["command", "outcome"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, float("inf")),
    registry=REGISTRY,
)
broker_connects = Counter("node_agent_broker_connects", "Sessions opened with the broker", registry=REGISTRY)
broker_reconnects = Counter(
    "node_agent_broker_reconnects", "Sessions opened with the broker after the first", registry=REGISTRY
)
staging_bytes = Counter("node_agent_staging_bytes", "Bytes of resource files downloaded", registry=REGISTRY)
staging_cache_hits = Counter("node_agent_staging_cache_hits", "Resource files served from the cache", registry=REGISTRY)
staging_cache_misses = Counter(
    "node_agent_staging_cache_misses", "Resource files not in the cache (downloaded)", registry=REGISTRY
)
for _state in TASK_STATES:
    tasks.labels(_state)


class _TaskBook:
    """The last published state of every task this node holds, behind the ``node_agent_tasks`` gauge."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], str] = {}
        self._counts: Tally[str] = Tally()  # of ``_states``' values, kept in step (a state change is O(1))
        self._subtasks_seen: set[tuple[str, str, datetime]] = set()
        self._lock = threading.Lock()  # the endpoint's thread reads the gauge while the loop writes it

    def task(
        self, job_id: str, task_id: str, state: str | None, result: str | None = None, ran_s: float | None = None
    ) -> None:
        """A task's new state; None when it left this node (handed back, or its job deleted)."""
        with self._lock:
            before = self._states.pop((job_id, task_id), None)
            if before is not None:
                self._counts[before] -= 1
            if state is not None:
                self._states[(job_id, task_id)] = state
                self._counts[state] += 1
            changed = {name: self._counts[name] for name in (before, state) if name is not None}
        for name, count in changed.items():
            tasks.labels(name).set(count)
        if state == "completed" and before != "completed":
            tasks_completed.labels(result or "unknown").inc()
            if ran_s is not None:
                task_duration.labels(result or "unknown").observe(max(ran_s, 0.0))

    def subtask_ended(self, kind: str, job_id: str, start: datetime, end: datetime, result: str | None) -> None:
        """A preparation or release that ended; the same end seen again (republished status) counts once."""
        if (kind, job_id, end) in self._subtasks_seen:
            return
        self._subtasks_seen.add((kind, job_id, end))
        subtask_duration.labels(kind, result or "unknown").observe(max((end - start).total_seconds(), 0.0))

    def forget_job(self, job_id: str) -> None:
        self._subtasks_seen = {seen for seen in self._subtasks_seen if seen[1] != job_id}


task_book = _TaskBook()


class NodeCollector(Collector):
    """CPU, memory and disk of the node, measured when scraped (in the endpoint's thread, never the loop)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def collect(self) -> Iterator[GaugeMetricFamily]:
        figures = measure_node(self.root)
        values = {
            "node_agent_node_cpu_percent": ("CPU use of the whole node, percent of all CPUs", figures.cpu_percent),
            "node_agent_node_memory_total_bytes": ("Memory of the node", figures.memory_total_bytes),
            "node_agent_node_memory_available_bytes": ("Memory available", figures.memory_available_bytes),
            "node_agent_node_disk_total_bytes": ("Size of the node root's file system", figures.disk_total_bytes),
            "node_agent_node_disk_free_bytes": ("Free bytes on the node root's file system", figures.disk_free_bytes),
        }
        for name, (text, value) in values.items():
            if value is not None:
                yield GaugeMetricFamily(name, text, value=value)


class MetricsServer:
    """The HTTP endpoint in a daemon thread; ``close()`` stops it."""

    def __init__(self, host: str, port: int, root: Path) -> None:
        self._collector = NodeCollector(root)
        REGISTRY.register(self._collector)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=REGISTRY)
        except BaseException:
            REGISTRY.unregister(self._collector)
            raise

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        server: WSGIServer = self._server
        server.shutdown()
        server.server_close()
        self._thread.join()
        REGISTRY.unregister(self._collector)
