"""Prometheus metrics in the text exposition format, without a client library.

A `Registry` holds counters, histograms and gauges read at scrape time. The HTTP layer records
requests by route and status; each domain area registers its own counters on the app's registry
(`app[METRICS].counter(...)`). Label values are bounded by construction: routes are the route
table's templates, never raw paths.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(names: Labels, values: Labels, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


@dataclass
class Counter:
    name: str
    help: str
    labelnames: Labels = ()
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, labels: Labels = (), by: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + by

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_label_text(self.labelnames, labels)} {value:g}"


@dataclass
class Histogram:
    name: str
    help: str
    labelnames: Labels = ()
    buckets: tuple[float, ...] = LATENCY_BUCKETS_S
    # labels -> (bucket counts (non-cumulative, one extra for +Inf), sum, count)
    series: dict[Labels, list[float]] = field(default_factory=dict)

    def observe(self, labels: Labels, value: float) -> None:
        state = self.series.get(labels)
        if state is None:
            state = self.series[labels] = [0.0] * (len(self.buckets) + 3)
        state[bisect.bisect_left(self.buckets, value)] += 1
        state[-2] += value
        state[-1] += 1

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, state in sorted(self.series.items()):
            cumulative = 0.0
            for bound, count in zip(self.buckets, state, strict=False):
                cumulative += count
                le = _label_text(self.labelnames, labels, f'le="{bound:g}"')
                yield f"{self.name}_bucket{le} {cumulative:g}"
            inf = _label_text(self.labelnames, labels, 'le="+Inf"')
            yield f"{self.name}_bucket{inf} {state[-1]:g}"
            yield f"{self.name}_sum{_label_text(self.labelnames, labels)} {state[-2]:.6f}"
            yield f"{self.name}_count{_label_text(self.labelnames, labels)} {state[-1]:g}"


@dataclass
class Gauge:
    """A value read when scraped: `read()` yields (label values, value)."""

    name: str
    help: str
    labelnames: Labels
    read: Callable[[], Iterable[tuple[Labels, float]]]

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        for labels, value in self.read():
            yield f"{self.name}{_label_text(self.labelnames, labels)} {value:g}"


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, Counter | Histogram | Gauge] = {}

    def counter(self, name: str, help: str, labelnames: Labels = ()) -> Counter:
        return self._add(Counter(name, help, labelnames))  # type: ignore[return-value]

    def histogram(self, name: str, help: str, labelnames: Labels = ()) -> Histogram:
        return self._add(Histogram(name, help, labelnames))  # type: ignore[return-value]

    def gauge(
        self,
        name: str,
        help: str,
        labelnames: Labels,
        read: Callable[[], Iterable[tuple[Labels, float]]],
    ) -> Gauge:
        return self._add(Gauge(name, help, labelnames, read))  # type: ignore[return-value]

    def _add(self, metric: Counter | Histogram | Gauge) -> Counter | Histogram | Gauge:
        existing = self._metrics.get(metric.name)
        if existing is not None:
            assert type(existing) is type(metric), f"metric {metric.name} defined twice"
            return existing
        self._metrics[metric.name] = metric
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
