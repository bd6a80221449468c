"""``/metrics``: the broker's figures, each plugin's process figures and the numeric
properties the ``metrics`` patterns select, in Prometheus' exposition format, written
by the official ``prometheus_client`` from what the dashboard already holds (nothing
is asked of the broker per scrape but the sessions' queued bytes)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from live_state import Shown, numeric
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from plugboard.protocol.names import matches

BROKER_GAUGES = {"sessions": "connected peers", "properties": "declared properties",
                 "uptime": "seconds since the broker started"}
BROKER_COUNTERS = {"messages_in": "messages received", "messages_out": "messages sent",
                   "drops": "messages to slow peers dropped at their queue limit",
                   "store_commits": "store transactions written"}
PLUGIN_GAUGES = {"cpu_percent": ("cpu_percent", "CPU share, percent of one core"),
                 "memory_rss": ("memory_rss_bytes", "resident memory"),
                 "threads": ("threads", "threads"), "open_files": ("open_files", "open files"),
                 "uptime": ("uptime_seconds", "seconds since the process started")}


class PlugboardCollector(Collector):
    def __init__(self, props: dict[str, Shown], patterns: list[str]) -> None:
        self.props = props
        self.patterns = patterns
        self.sessions: list[dict[str, Any]] = []
        """The broker's ``sessions`` answer, refreshed before each scrape."""

    def _value(self, name: str) -> float | None:
        shown = self.props.get(name)
        return numeric(shown.value) if shown is not None else None

    def collect(self) -> Iterator[Metric]:
        for key, text in BROKER_GAUGES.items():
            value = self._value(f"system/broker/{key}")
            if value is not None:
                suffix = "_seconds" if key == "uptime" else ""
                yield GaugeMetricFamily(f"plugboard_broker_{key}{suffix}", text, value=value)
        for key, text in BROKER_COUNTERS.items():
            value = self._value(f"system/broker/{key}")
            if value is not None:
                yield CounterMetricFamily(f"plugboard_broker_{key}", text, value=value)
        store_error = self.props.get("system/broker/store_error")
        if store_error is not None:
            yield GaugeMetricFamily("plugboard_broker_store_failing", "1 while the store cannot "
                                    "write (system/broker/store_error says why)",
                                    value=1.0 if store_error.value else 0.0)
        yield GaugeMetricFamily("plugboard_broker_queued_bytes", "bytes held for peers that "
                                "read too slowly", value=sum(s.get("queued_bytes", 0)
                                                             for s in self.sessions))
        yield from self._plugins()
        yield from self._properties()

    def _plugins(self) -> Iterator[Metric]:
        labels = ["plugin", "host"]
        up = GaugeMetricFamily("plugboard_plugin_up", "1 when the plugin is ready", labels=labels)
        restarts = CounterMetricFamily("plugboard_plugin_restarts", "restarts by its agent",
                                       labels=labels)
        gauges = {key: GaugeMetricFamily(f"plugboard_plugin_{name}", text, labels=labels)
                  for key, (name, text) in PLUGIN_GAUGES.items()}
        for plugin in sorted({n.split("/")[2] for n in self.props
                              if n.startswith("system/plugins/") and n.count("/") >= 3}):
            base = f"system/plugins/{plugin}/"
            state = self.props.get(base + "state")
            host = self.props.get(base + "host")
            if state is None:
                continue
            ids = [plugin, str(host.value) if host is not None else ""]
            up.add_metric(ids, 1.0 if state.value == "ready" else 0.0)
            restarts.add_metric(ids, self._value(base + "restarts") or 0.0)
            for key, family in gauges.items():
                value = self._value(base + key)
                if value is not None:
                    family.add_metric(ids, value)
        yield up
        yield restarts
        yield from gauges.values()

    def _properties(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("plugboard_property", "numeric properties the dashboard's "
                                   "metrics patterns select", labels=["name", "unit", "owner"])
        for name, shown in sorted(self.props.items()):
            value = numeric(shown.value)
            if value is not None and any(matches(p, name) for p in self.patterns):
                family.add_metric([name, shown.unit, shown.owner], value)
        yield family


class Exporter:
    """A registry with the one collector; :meth:`render` is the /metrics body."""

    def __init__(self, props: dict[str, Shown], patterns: list[str]) -> None:
        self.collector = PlugboardCollector(props, patterns)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)

    def render(self, sessions: list[dict[str, Any]]) -> bytes:
        self.collector.sessions = sessions
        return generate_latest(self.registry)
