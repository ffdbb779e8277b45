"""The Prometheus endpoint (``metrics_port``): serves ``ops/metrics.py``'s figures, the process's and the node's.

Imported only when the endpoint is configured (prometheus-client is about 10 MB). Everything lives in a registry of
its own, not prometheus-client's global one, so the endpoint shows this agent's figures and nothing a library
registered.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import accumulate
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from node_agent.ops import metrics
from node_agent.ops.figures import measure_node


class AgentCollector(Collector):
    """``ops/metrics.py``'s families as Prometheus metrics, read when scraped."""

    def collect(self) -> Iterator[Metric]:
        for family in metrics.FAMILIES:
            names = list(family.label_names)
            exported: CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
            if family.kind == "counter":
                exported = CounterMetricFamily(family.name, family.help, labels=names)
            elif family.kind == "gauge":
                exported = GaugeMetricFamily(family.name, family.help, labels=names)
            else:
                exported = HistogramMetricFamily(family.name, family.help, labels=names)
            for key, value in family.snapshot().items():
                if isinstance(exported, HistogramMetricFamily):
                    bounds = ["+Inf" if bound == math.inf else repr(float(bound)) for bound in family.buckets]
                    exported.add_metric(list(key), list(zip(bounds, accumulate(value[:-1]), strict=True)), value[-1])
                else:
                    exported.add_metric(list(key), value[0])
            yield exported


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


def agent_registry(root: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    registry.register(AgentCollector())
    registry.register(NodeCollector(root))
    return registry


class MetricsServer:
    """The HTTP endpoint in a daemon thread; ``close()`` stops it."""

    def __init__(self, host: str, port: int, root: Path) -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=agent_registry(root))

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        server: WSGIServer = self._server
        server.shutdown()
        server.server_close()
        self._thread.join()
