"""/metrics numbers: exact integers, and sums over every worker process sharing a directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.metrics import FILE_BYTES_MIN, FILE_SUFFIX, Registry, shared_directory

LABELS = ("GET", "/v1/cards/{card_id}", "200")

# One worker: counts `n` requests of 3 ms plus one batch of a million, then, with "stay",
# keeps running (its file open) until its stdin closes.
WORKER = """
import sys
from gateway.metrics import Registry

directory, n, stay = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "stay"
registry = Registry(directory)
requests = registry.counter("t_requests_total", "requests", ("method", "route", "status"))
latency = registry.histogram("t_request_seconds", "latency", ("method", "route", "status"))
labels = ("GET", "/v1/cards/{card_id}", "200")
for _ in range(n):
    requests.inc(labels)
    latency.observe(labels, 0.003)
requests.inc(("POST", "/v1/top-ups", "201"), 1_000_000)
print("ready", flush=True)
if stay:
    sys.stdin.read()
"""


def start_worker(directory: Path, n: int, stay: bool) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(directory), str(n), "stay" if stay else "exit"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_counts_above_a_million_print_as_exact_integers() -> None:
    registry = Registry()
    requests = registry.counter("t_requests_total", "requests", ("method", "route", "status"))
    latency = registry.histogram("t_request_seconds", "latency", ("method", "route", "status"))
    bytes_in = registry.counter("t_bytes_total", "bytes")
    requests.inc(LABELS, 1_234_566)
    requests.inc(LABELS)
    for _ in range(1_000_001):
        latency.observe(LABELS, 0.002)
    bytes_in.inc(by=0.5)
    text = registry.render()
    labels = 'method="GET",route="/v1/cards/{card_id}",status="200"'
    assert f"t_requests_total{{{labels}}} 1234567\n" in text
    assert f't_request_seconds_bucket{{{labels},le="0.001"}} 0\n' in text
    assert f't_request_seconds_bucket{{{labels},le="0.0025"}} 1000001\n' in text
    assert f't_request_seconds_bucket{{{labels},le="+Inf"}} 1000001\n' in text
    assert f"t_request_seconds_count{{{labels}}} 1000001\n" in text
    assert f"t_request_seconds_sum{{{labels}}} 2000.002" in text
    assert "t_bytes_total 0.5\n" in text
    assert "e+" not in text


def test_in_memory_registries_are_isolated() -> None:
    first, second = Registry(), Registry()
    first.counter("t_total", "t").inc(by=3)
    second.counter("t_total", "t").inc()
    assert "t_total 3\n" in first.render()
    assert "t_total 1\n" in second.render()
    third = Registry()
    third.counter("t_total", "t")
    assert third.render() == "# HELP t_total t\n# TYPE t_total counter\n"


def test_processes_sharing_a_directory_sum_live_and_exited_workers(tmp_path: Path) -> None:
    staying = start_worker(tmp_path, 700, stay=True)
    exiting = start_worker(tmp_path, 500, stay=False)
    try:
        assert staying.stdout is not None and staying.stdout.readline() == "ready\n"
        assert exiting.communicate("", timeout=10) == ("ready\n", None)
        # This test is the third process: it renders families only the workers defined.
        reader = Registry(tmp_path)
        while_one_runs = reader.render()
    finally:
        staying.communicate("", timeout=10)
    labels = 'method="GET",route="/v1/cards/{card_id}",status="200"'
    for text in (while_one_runs, reader.render()):
        assert f"t_requests_total{{{labels}}} 1200\n" in text
        assert 't_requests_total{method="POST",route="/v1/top-ups",status="201"} 2000000\n' in text
        assert f't_request_seconds_bucket{{{labels},le="0.0025"}} 0\n' in text
        assert f't_request_seconds_bucket{{{labels},le="0.005"}} 1200\n' in text
        assert f"t_request_seconds_count{{{labels}}} 1200\n" in text
        assert f"t_request_seconds_sum{{{labels}}} 3.600000\n" in text
        assert text.count("# TYPE t_requests_total counter") == 1
    assert staying.returncode == exiting.returncode == 0
    assert len(list(tmp_path.glob("*" + FILE_SUFFIX))) == 3


def test_a_process_adds_its_own_counts_to_the_other_workers(tmp_path: Path) -> None:
    worker = start_worker(tmp_path, 10, stay=False)
    worker.communicate("", timeout=10)
    assert worker.returncode == 0
    registry = Registry(tmp_path)
    registry.counter("t_requests_total", "requests", ("method", "route", "status")).inc(LABELS, 5)
    registry.counter("t_local_total", "only here").inc()
    text = registry.render()
    assert 't_requests_total{method="GET",route="/v1/cards/{card_id}",status="200"} 15\n' in text
    assert "t_local_total 1\n" in text
    assert text.index("t_requests_total") < text.index("t_local_total")


def test_many_label_sets_grow_the_file(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    latency = registry.histogram("t_request_seconds", "latency", ("route",))
    routes = [f"/v1/route/{n}" for n in range(1000)]
    for route in routes:
        latency.observe((route,), 0.2)
    latency.observe((routes[0],), 0.2)
    (path,) = tmp_path.glob("*" + FILE_SUFFIX)
    assert path.stat().st_size > FILE_BYTES_MIN
    text = Registry(tmp_path).render()
    assert 't_request_seconds_count{route="/v1/route/0"} 2\n' in text
    assert 't_request_seconds_count{route="/v1/route/999"} 1\n' in text


def test_a_forked_child_counts_in_its_own_file(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    requests = registry.counter("t_requests_total", "requests")
    requests.inc(by=5)
    pid = os.fork()
    if pid == 0:
        requests.inc(by=7)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    requests.inc()
    assert "t_requests_total 13\n" in registry.render()
    assert len(list(tmp_path.glob("*" + FILE_SUFFIX))) == 2


def test_gauges_carry_the_pid_only_when_shared(tmp_path: Path) -> None:
    def read() -> list[tuple[tuple[str, ...], float]]:
        return [(("max",), 10)]

    for registry, line in (
        (Registry(), 't_pool{state="max"} 10\n'),
        (Registry(tmp_path), f't_pool{{state="max",pid="{os.getpid()}"}} 10\n'),
    ):
        registry.gauge("t_pool", "pool", ("state",), read)
        assert line in registry.render()


def test_shared_directory_is_fresh_and_removed(tmp_path: Path) -> None:
    stale = tmp_path / "metrics" / "not-a-pid"
    stale.mkdir(parents=True)
    (stale / ("1-abcd" + FILE_SUFFIX)).write_bytes(b"\0" * 8)
    leftover = tmp_path / "metrics" / str(os.getpid())
    leftover.mkdir()
    (leftover / ("2-abcd" + FILE_SUFFIX)).write_bytes(b"\0" * 8)
    with shared_directory(tmp_path) as directory:
        assert directory == leftover
        assert list(directory.iterdir()) == []
        assert not stale.exists()
        Registry(directory).counter("t_total", "t").inc()
    assert not directory.exists()
