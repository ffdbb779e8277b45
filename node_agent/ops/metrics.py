"""This agent's metrics, kept as plain numbers; ``ops/metrics_endpoint.py`` serves them when ``metrics_port`` is set.

Other modules count through the objects here, e.g. ``metrics.staging_bytes.inc(n)`` after a download,
``metrics.staging_cache_hits.inc()`` on a cache hit. They are not prometheus-client's objects: that library (about
10 MB) is imported only by the endpoint, so an agent without one does not carry it. Label values are small fixed
sets (states, results, command types): never a task or job id, which would keep memory per task for ever.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter as Tally
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]

TASK_STATES = ("active", "preparing", "running", "completed")
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, float("inf"))

_lock = threading.Lock()  # the endpoint's thread reads while the event loop writes


@dataclass(eq=False, slots=True)
class Family:
    """One metric and its values by label values. A histogram's values are its bucket counts, then its sum."""

    name: str
    help: str
    kind: Kind
    label_names: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # histograms: upper bounds, the last one +Inf
    values: dict[tuple[str, ...], list[float]] = field(default_factory=dict)

    def labels(self, *label_values: str) -> Sample:
        if len(label_values) != len(self.label_names):
            raise ValueError(f"{self.name} takes the labels {self.label_names}, not {label_values}")
        return Sample(self, label_values)

    def inc(self, amount: float = 1.0) -> None:
        Sample(self, ()).inc(amount)

    def snapshot(self) -> dict[tuple[str, ...], list[float]]:
        with _lock:
            return {key: list(value) for key, value in self.values.items()}


@dataclass(frozen=True, slots=True)
class Sample:
    family: Family
    key: tuple[str, ...]

    def _value(self) -> list[float]:
        values = self.family.values
        if (value := values.get(self.key)) is None:
            value = values[self.key] = [0.0] * (len(self.family.buckets) + 1 if self.family.buckets else 1)
        return value

    def inc(self, amount: float = 1.0) -> None:
        with _lock:
            self._value()[0] += amount

    def set(self, value: float) -> None:
        with _lock:
            self._value()[0] = value

    def observe(self, value: float) -> None:
        with _lock:
            counts = self._value()
            counts[bisect.bisect_left(self.family.buckets, value)] += 1
            counts[-1] += value

    def get(self) -> float:
        """A counter's or gauge's value (for tests)."""
        with _lock:
            return self._value()[0]


FAMILIES: list[Family] = []


def _family(name: str, text: str, kind: Kind, labels: tuple[str, ...] = (), buckets: tuple[float, ...] = ()) -> Family:
    family = Family(name, text, kind, labels, buckets)
    FAMILIES.append(family)
    return family


tasks = _family("node_agent_tasks", "Tasks held by this node, by state", "gauge", ("state",))
tasks_completed = _family(
    "node_agent_tasks_completed", "Tasks completed on this node, by result", "counter", ("result",)
)
task_duration = _family(
    "node_agent_task_duration_seconds", "Task run time, all attempts", "histogram", ("result",), DURATION_BUCKETS
)
subtask_duration = _family(
    "node_agent_subtask_duration_seconds",
    "Job preparation and release task run time, by kind (preparation, release) and result",
    "histogram",
    ("kind", "result"),
    DURATION_BUCKETS,
)
command_duration = _family(
    "node_agent_command_duration_seconds",
    "Time from a command's arrival to its reply, by command type and outcome (ok, error)",
    "histogram",
    ("command", "outcome"),
    (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, float("inf")),
)
broker_connects = _family("node_agent_broker_connects", "Sessions opened with the broker", "counter")
broker_reconnects = _family(
    "node_agent_broker_reconnects", "Sessions opened with the broker after the first", "counter"
)
staging_bytes = _family("node_agent_staging_bytes", "Bytes of resource files downloaded", "counter")
staging_cache_hits = _family("node_agent_staging_cache_hits", "Resource files served from the cache", "counter")
staging_cache_misses = _family(
    "node_agent_staging_cache_misses", "Resource files not in the cache (downloaded)", "counter"
)
for _state in TASK_STATES:
    tasks.labels(_state).set(0)
for _counter in (broker_connects, broker_reconnects, staging_bytes, staging_cache_hits, staging_cache_misses):
    _counter.inc(0)  # shown as 0 before the first event


class _TaskBook:
    """The last published state of every task this node holds, behind the ``node_agent_tasks`` gauge."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], str] = {}
        self._counts: Tally[str] = Tally()
        self._subtasks_seen: set[tuple[str, str, datetime]] = set()

    def task(
        self, job_id: str, task_id: str, state: str | None, result: str | None = None, ran_s: float | None = None
    ) -> None:
        """A task's new state; None when it left this node (handed back, or its job deleted)."""
        before = self._states.pop((job_id, task_id), None)
        if state is not None:
            self._states[(job_id, task_id)] = state
        for name, change in ((before, -1), (state, 1)):  # O(1): this runs on every state change of every task
            if name is not None:
                self._counts[name] += change
                tasks.labels(name).set(self._counts[name])
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
