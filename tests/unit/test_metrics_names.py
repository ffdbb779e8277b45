"""The example Grafana dashboard asks only for metrics the agent exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from node_agent.ops import metrics
from node_agent.ops.metrics_endpoint import AgentCollector

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "node-agent.json"
NODE_GAUGES = {f"node_agent_node_{name}" for name in ("cpu_percent", "memory_total_bytes", "memory_available_bytes")}
NODE_GAUGES |= {"node_agent_node_disk_total_bytes", "node_agent_node_disk_free_bytes"}  # scraped from NodeCollector


def exported() -> set[str]:
    names = set(NODE_GAUGES)
    for family in AgentCollector().collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
    return names


def test_dashboard_queries_name_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\bnode_agent_[a-z_]+", expr)}
    assert used and used <= exported(), used - exported()


def test_task_book_counts_a_completion_once_and_forgets_handed_back_tasks() -> None:
    book = metrics._TaskBook()
    before = metrics.tasks_completed.labels("success").get()
    book.task("j", "t", "running")
    assert metrics.tasks.labels("running").get() == 1
    book.task("j", "t", "completed", "success", 2.0)
    book.task("j", "t", "completed", "success", 2.0)  # republished: counted once
    assert metrics.tasks_completed.labels("success").get() == before + 1
    assert metrics.tasks.labels("running").get() == 0
    book.task("j", "t", None)
    assert metrics.tasks.labels("completed").get() == 0
