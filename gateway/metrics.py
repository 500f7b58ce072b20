"""Prometheus metrics in the text exposition format, without a client library.

A `Registry` holds counters, histograms and gauges read at scrape time. The HTTP layer records
requests by route and status; each domain area registers its own counters on the app's registry
(`app[METRICS].counter(...)`). Label values are bounded by construction: routes are the route
table's templates, never raw paths.

Without a directory a registry counts in memory, for itself alone: tests build many apps in one
process. With a shared directory (`onecard serve --workers N`, see `shared_directory`) each
process counts in its own mmap'd file there, and `render()` sums the files of every worker, live
or exited, so a scrape is right whichever worker answers. Gauges are read in the answering
process and labelled with its pid. Recording (`inc`, `observe`) must never take a lock, make a
system call or allocate beyond a first sight of a label set: it runs on every HTTP request.
This module never reads the environment and never imports aiohttp.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import mmap
import os
import secrets
import shutil
import struct
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# A worker's file starts this big (sparse until written) and doubles when full.
FILE_BYTES_MIN = 64 * 1024
# Far above what bounded label values need: reaching it is a bug, never traffic.
FILE_BYTES_MAX = 64 * 1024 * 1024
FILE_SUFFIX = ".metrics"
# float64 holds every integer up to here exactly; counts print as integers below it.
EXACT_INTEGER_MAX = 2**53

_CELL_BYTES = 8
_HEADER = struct.Struct("<Q")  # bytes of the file in use, header included
_RECORD = struct.Struct("<II")  # key bytes, cells

Labels = tuple[str, ...]
Series = dict[Labels, list[float]]
GaugeRead = Callable[[], Iterable[tuple[Labels, float]]]


class _Cells(Protocol):
    def __getitem__(self, index: int, /) -> float: ...
    def __setitem__(self, index: int, value: float, /) -> None: ...


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(names: Labels, values: Labels, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    """Exact digits for counts (`1234567`, never `1.23457e+06`); Prometheus spellings else."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) <= EXACT_INTEGER_MAX:
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


@dataclass(frozen=True)
class _Family:
    """What a counter or histogram is; shared files carry it so any worker can render it."""

    name: str
    type: str  # "counter" or "histogram"
    help: str
    labelnames: Labels
    buckets: tuple[float, ...] = ()

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> _Family:
        return cls(
            value["name"], value["type"], value["help"],
            tuple(value["labelnames"]), tuple(value["buckets"]),
        )  # fmt: skip

    @property
    def width(self) -> int:
        """Cells per label set: a counter's value; a histogram's buckets, +Inf, sum, count."""
        return 1 if self.type == "counter" else len(self.buckets) + 3

    def render(self, series: Mapping[Labels, Sequence[float]]) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.type}"
        for labels, cells in sorted(series.items()):
            if self.type == "counter":
                yield f"{self.name}{_label_text(self.labelnames, labels)} {_number(cells[0])}"
            else:
                yield from self._histogram_lines(labels, cells)

    def _histogram_lines(self, labels: Labels, cells: Sequence[float]) -> Iterator[str]:
        cumulative: float = 0
        for bound, count in zip(self.buckets, cells, strict=False):
            cumulative += count
            le = _label_text(self.labelnames, labels, f'le="{bound:g}"')
            yield f"{self.name}_bucket{le} {_number(cumulative)}"
        inf = _label_text(self.labelnames, labels, 'le="+Inf"')
        yield f"{self.name}_bucket{inf} {_number(cells[-1])}"
        yield f"{self.name}_sum{_label_text(self.labelnames, labels)} {cells[-2]:.6f}"
        yield f"{self.name}_count{_label_text(self.labelnames, labels)} {_number(cells[-1])}"


class _Store(Protocol):
    """Where a registry's cells live; `cells` may be replaced when the store grows."""

    cells: _Cells

    def define(self, family: _Family) -> None: ...

    def allocate(self, family: _Family, labels: Labels) -> int: ...


class _MemoryStore:
    """Cells in a list: Python ints stay exact integers however large."""

    def __init__(self) -> None:
        self._cells: list[float] = []
        self.cells: _Cells = self._cells

    def define(self, family: _Family) -> None:
        pass

    def allocate(self, family: _Family, labels: Labels) -> int:
        start = len(self._cells)
        self._cells.extend([0] * family.width)
        return start


class _Recorded:
    """A counter or histogram: label sets mapped to their first cell in the store."""

    def __init__(self, family: _Family, store: _Store) -> None:
        self.family = family
        self.name = family.name
        self._store = store
        self._slots: dict[Labels, int] = {}

    def _allocate(self, labels: Labels) -> int:
        assert len(labels) == len(self.family.labelnames), f"labels of {self.name}: {labels}"
        slot = self._slots[labels] = self._store.allocate(self.family, labels)
        return slot

    def series(self) -> Series:
        """This registry's own values (the whole truth only in memory)."""
        cells, width = self._store.cells, self.family.width
        return {labels: [cells[s + i] for i in range(width)] for labels, s in self._slots.items()}


class Counter(_Recorded):
    def inc(self, labels: Labels = (), by: float = 1) -> None:
        slot = self._slots.get(labels)
        if slot is None:
            slot = self._allocate(labels)
        self._store.cells[slot] += by


class Histogram(_Recorded):
    def __init__(self, family: _Family, store: _Store) -> None:
        super().__init__(family, store)
        self._buckets = family.buckets
        self._sum_at = len(family.buckets) + 1
        self._count_at = len(family.buckets) + 2

    def observe(self, labels: Labels, value: float) -> None:
        slot = self._slots.get(labels)
        if slot is None:
            slot = self._allocate(labels)
        cells = self._store.cells
        cells[slot + bisect.bisect_left(self._buckets, value)] += 1
        cells[slot + self._sum_at] += value
        cells[slot + self._count_at] += 1


@dataclass
class Gauge:
    """A value read when scraped: `read()` yields (label values, value)."""

    name: str
    help: str
    labelnames: Labels
    read: GaugeRead

    def render(self, extra: str = "") -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        for labels, value in self.read():
            yield f"{self.name}{_label_text(self.labelnames, labels, extra)} {_number(value)}"


M = TypeVar("M", Counter, Histogram)


class Registry:
    """Metrics of one app; `directory` set: summed over every process counting there."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self._metrics: dict[str, Counter | Histogram | Gauge] = {}
        self._shared = _SharedStore(Path(directory)) if directory else None
        self._store: _Store = self._shared or _MemoryStore()

    def counter(self, name: str, help: str, labelnames: Labels = ()) -> Counter:
        return self._recorded(_Family(name, "counter", help, labelnames), Counter)

    def histogram(self, name: str, help: str, labelnames: Labels = ()) -> Histogram:
        family = _Family(name, "histogram", help, labelnames, LATENCY_BUCKETS_S)
        return self._recorded(family, Histogram)

    def gauge(self, name: str, help: str, labelnames: Labels, read: GaugeRead) -> Gauge:
        existing = self._metrics.get(name)
        if existing is not None:
            assert isinstance(existing, Gauge), f"metric {name} defined twice"
            return existing
        gauge = self._metrics[name] = Gauge(name, help, labelnames, read)
        return gauge

    def _recorded(self, family: _Family, kind: type[M]) -> M:
        existing = self._metrics.get(family.name)
        if existing is not None:
            assert isinstance(existing, kind), f"metric {family.name} defined twice"
            return existing
        self._store.define(family)
        metric = self._metrics[family.name] = kind(family, self._store)
        return metric

    def render(self) -> str:
        totals = self._shared.totals() if self._shared is not None else None
        # Each worker's gauges are its own (pool sizes): say whose they are.
        gauge_label = f'pid="{os.getpid()}"' if totals is not None else ""
        lines: list[str] = []
        for metric in self._metrics.values():
            if isinstance(metric, Gauge):
                lines.extend(metric.render(gauge_label))
            elif totals is None:
                lines.extend(metric.family.render(metric.series()))
            else:
                _, series = totals.pop(metric.name, (metric.family, {}))
                lines.extend(metric.family.render(series))
        for family, series in sorted((totals or {}).values(), key=lambda t: t[0].name):
            lines.extend(family.render(series))  # defined by other workers only
        return "\n".join(lines) + "\n"


def _padded(size: int) -> int:
    return -(-size // _CELL_BYTES) * _CELL_BYTES


class _SharedStore:
    """This process's cells in its own file of `directory`, and the sums over all its files.

    A file is a header (bytes in use), then records that are appended and never move: key bytes
    and cell count, the key (JSON, zero-padded to 8 bytes), the cells (float64, native order).
    A family's key is its definition (an object), a label set's key is [name, labels]. The header
    is written after the record it covers, so readers trust only the bytes below it. Only this
    process writes its file, so adding to a cell needs no lock.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._indexes: dict[str, _FileIndex] = {}
        self._open([])
        _SHARED_STORES.add(self)

    def _open(self, records: list[tuple[bytes, int]]) -> None:
        """A new file of this process, holding `records` (zeroed) at the same cells."""
        self.path = self.directory / f"{os.getpid()}-{secrets.token_hex(4)}{FILE_SUFFIX}"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, FILE_BYTES_MIN)
            self._map = mmap.mmap(fd, FILE_BYTES_MIN)
        finally:
            os.close(fd)
        self._view = memoryview(self._map).cast("d")
        self.cells: _Cells = cast(_Cells, self._view)
        self._records: list[tuple[bytes, int]] = []
        self._used = _HEADER.size
        _HEADER.pack_into(self._map, 0, self._used)
        for key, width in records:
            self._append(key, width)

    def define(self, family: _Family) -> None:
        self._append(json.dumps(asdict(family)).encode(), 0)

    def allocate(self, family: _Family, labels: Labels) -> int:
        return self._append(json.dumps([family.name, labels]).encode(), family.width)

    def _append(self, key: bytes, width: int) -> int:
        """Adds a record of `width` zero cells; the index of its first cell."""
        key_at = self._used + _RECORD.size
        cells_at = key_at + _padded(len(key))
        end = cells_at + width * _CELL_BYTES
        if end > len(self._map):
            self._grow(end)
        _RECORD.pack_into(self._map, self._used, len(key), width)
        self._map[key_at : key_at + len(key)] = key
        self._used = end
        _HEADER.pack_into(self._map, 0, end)
        self._records.append((key, width))
        return cells_at // _CELL_BYTES

    def _grow(self, needed_bytes: int) -> None:
        size = len(self._map)
        while size < needed_bytes:
            size *= 2
        assert size <= FILE_BYTES_MAX, f"{self.path}: label values are not bounded"
        self._view.release()  # resize refuses while a view exports the map
        self._map.resize(size)
        self._view = memoryview(self._map).cast("d")
        self.cells = cast(_Cells, self._view)

    def reopen_after_fork(self) -> None:
        """In a forked child: the parent's file stays the parent's; count in a file of our own."""
        self._view.release()
        self._map.close()
        self._open(self._records)

    def totals(self) -> dict[str, tuple[_Family, Series]]:
        """Every family defined in the directory, with its label sets summed over all files."""
        families: dict[str, _Family] = {}
        sums: dict[str, Series] = {}
        for path in sorted(self.directory.glob("*" + FILE_SUFFIX)):
            data = path.read_bytes()
            index = self._indexes.setdefault(path.name, _FileIndex())
            index.update(data)
            for family in index.families:
                families.setdefault(family.name, family)
            for name, labels, offset, width in index.series:
                cells = sums.setdefault(name, {}).setdefault(labels, [0.0] * width)
                for i, value in enumerate(struct.unpack_from(f"{width}d", data, offset)):
                    cells[i] += value
        return {name: (family, sums.get(name, {})) for name, family in families.items()}


@dataclass
class _FileIndex:
    """The records of one file read so far; they never move, so each is parsed once."""

    parsed: int = _HEADER.size
    families: list[_Family] = field(default_factory=list)
    series: list[tuple[str, Labels, int, int]] = field(default_factory=list)

    def update(self, data: bytes) -> None:
        if len(data) < _HEADER.size:
            return  # created, not yet sized
        used = min(_HEADER.unpack_from(data)[0], len(data))
        while self.parsed + _RECORD.size <= used:
            key_bytes, width = _RECORD.unpack_from(data, self.parsed)
            key_at = self.parsed + _RECORD.size
            cells_at = key_at + _padded(key_bytes)
            end = cells_at + width * _CELL_BYTES
            if end > used:
                return
            key = json.loads(data[key_at : key_at + key_bytes])
            if width == 0:
                self.families.append(_Family.from_json(key))
            else:
                self.series.append((key[0], tuple(key[1]), cells_at, width))
            self.parsed = end


_SHARED_STORES: weakref.WeakSet[_SharedStore] = weakref.WeakSet()


def _reopen_shared_stores() -> None:
    for store in list(_SHARED_STORES):
        store.reopen_after_fork()


os.register_at_fork(after_in_child=_reopen_shared_stores)


@contextlib.contextmanager
def shared_directory(data_dir: Path) -> Iterator[Path]:
    """A fresh directory for the metrics of one `serve --workers N` run, removed at its end.

    It is named after this (the supervisor's) pid. Directories of supervisors that are gone
    were left by runs killed before they could clean up; they are removed first.
    """
    root = data_dir.resolve() / "metrics"  # absolute: the workers get it through their env
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if not _alive(old.name):
            shutil.rmtree(old, ignore_errors=True)
    path = root / str(os.getpid())
    shutil.rmtree(path, ignore_errors=True)  # ours by pid reuse: an earlier run's
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _alive(name: str) -> bool:
    if not name.isdigit():
        return False
    try:
        os.kill(int(name), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
