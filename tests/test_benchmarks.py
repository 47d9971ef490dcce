"""The benchmark harness (benchmarks/): its results, and that it refuses lost events.

Real processes, real queues and buses, tiny event counts: these check the harness, not
anyone's speed.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import time
from typing import Any

import multiprocess
import pytest
from rich.console import Console

from benchmarks import harness, report, run
from benchmarks.systems import EmitterPort, ReceiverPort
from benchmarks.systems.mp_queue import MultiprocessingQueue
from benchmarks.verify import DeliveryError, OrderVerifier
from benchmarks.workloads import SMALL_TEXT, WORKLOADS

TINY: dict[str, Any] = dict(systems=["shmbus", "mp-queue"], workloads=["small"], subscribers=[1, 2],
            runs=1, events={"small": 300, "latency": 40, "growth": 600})


@pytest.mark.timeout(120)
def test_quick_suite_gives_every_figure_and_prints() -> None:
    labels: list[str] = []
    results = run.run_suite(**TINY, progress=labels.append)

    assert len(labels) == run.count_measurements(**TINY) == 2 * 2 + 2 + 2
    json.loads(json.dumps(results))  # JSON-able as it is
    assert results["failures"] == []
    throughput = {(r["system"], r["subscribers"]): r for r in results["throughput"]}
    assert set(throughput) == {("shmbus", 1), ("shmbus", 2), ("mp-queue", 1), ("mp-queue", 2)}
    for row in throughput.values():
        rate = row["events_per_s"]
        assert 0 < rate["min"] <= rate["median"] <= rate["max"]
        assert row["rss_peak_bytes"]["emitter"] > 0 and row["rss_peak_bytes"]["subscriber"] > 0
        cpu, by_role = row["cpu_us_per_event"], row["cpu_us_per_event_by_role"]
        assert 0 < cpu["min"] <= cpu["median"] <= cpu["max"]
        assert by_role["emitter"] > 0 and by_role["subscribers"] > 0
        assert by_role["emitter"] + by_role["subscribers"] == pytest.approx(cpu["median"])
    # Each subscriber unpickles and checks every event: two of them cost more than one.
    for system in ("shmbus", "mp-queue"):
        assert (throughput[(system, 2)]["cpu_us_per_event_by_role"]["subscribers"]
                > throughput[(system, 1)]["cpu_us_per_event_by_role"]["subscribers"])
    assert throughput[("shmbus", 2)]["vs_reference"] == 1.0
    assert throughput[("shmbus", 2)]["shm_peak_bytes"] > 0
    assert throughput[("mp-queue", 1)]["shm_peak_bytes"] is None
    for row in results["latency"]:
        assert 0 < row["p50_us"]["median"] <= row["p99_us"]["median"] <= row["max_us"]["median"]
    assert [r["system"] for r in results["growth"]] == ["shmbus", "mp-queue"]
    assert all(r["cpu_us_per_event"] > 0 for r in results["growth"])
    # RSS needs psutil (the bench extra); without it the figures are None, not made up.
    has_psutil = importlib.util.find_spec("psutil") is not None
    assert all((r["emitter"]["delta"] is not None) == has_psutil for r in results["growth"])
    assert results["machine"]["cpu_count"] >= 1
    assert results["shmbus_shared_memory"]["ring_bytes_per_subscriber"] == 256 * 512 + 128

    out = io.StringIO()
    run.print_table(results, Console(file=out, width=100))
    assert "mp-queue" in out.getvalue() and "latency" in out.getvalue()
    shown = f"cpu {throughput[('shmbus', 1)]['cpu_us_per_event']['median']:.3g}"
    assert shown in out.getvalue()


@pytest.mark.timeout(120)
def test_tables_fit_80_columns_with_every_workload_named_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    workloads = ["small", "large", "large-slow"]
    results = run.run_suite(systems=["shmbus-batch", "mp-queue"], workloads=workloads,
                            subscribers=[1], runs=1, latency=False, growth=False,
                            events={"small": 50, "large": 5, "large-slow": 5})
    out = io.StringIO()
    run.print_table(results, Console(file=out, width=80))
    assert max(len(line) for line in out.getvalue().splitlines()) <= 80
    assert "…" not in out.getvalue()  # nothing cut to fit
    # Memory takes two columns per workload; where they do not fit, the table is split,
    # each part as full as fits.
    monkeypatch.setattr(report, "WIDTH", 45)
    parts = [[c.header.split("\n")[0] for c in t.columns[1::2]]
             for t in report._memory_tables(results)]
    assert len(parts) > 1 and sum(parts, []) == workloads

    def width(some: list[str]) -> int:
        return report._width(report._memory_table("", results["throughput"], some))

    assert all(width(part) <= 45 for part in parts if len(part) > 1)
    assert all(width([*part, after[0]]) > 45 for part, after in zip(parts, parts[1:]))


def test_events_fit_their_stated_sizes_and_damage_is_seen() -> None:
    import pickle

    for workload in (WORKLOADS["small"], WORKLOADS["large"]):  # numpy is not a test extra
        body = workload.make_body()
        size = len(pickle.dumps(workload.event(123_456, 10**15, body), protocol=5))
        assert workload.body_bytes < size <= workload.message_bytes
        assert workload.body_ok(body)
    assert 80 <= len(pickle.dumps(WORKLOADS["small"].event(0, 0, SMALL_TEXT))) <= 120
    large = bytearray(WORKLOADS["large"].make_body())
    large[-1] ^= 0xFF
    assert not WORKLOADS["large"].body_ok(bytes(large))
    assert not WORKLOADS["large"].body_ok(large)  # a bytearray is not what was sent


def test_slow_workloads_compare_every_byte() -> None:
    large, slow = WORKLOADS["large"], WORKLOADS["large-slow"]
    body = slow.make_body()
    assert slow.body_ok(body) and slow.body_ok(bytes(body))  # equal, not identical
    damaged = bytearray(body)
    damaged[12_345] ^= 0xFF  # far from the fast check's samples
    assert large.body_ok(bytes(damaged)) and not slow.body_ok(bytes(damaged))
    assert not slow.body_ok(damaged)  # a bytearray is not what was sent
    if importlib.util.find_spec("numpy") is None:
        return  # numpy is in the bench extra, not the test extra
    numpy_fast, numpy_slow = WORKLOADS["numpy"], WORKLOADS["numpy-slow"]
    array = numpy_slow.make_body()
    assert numpy_slow.body_ok(array.copy())
    array[12_345] += 1
    assert numpy_fast.body_ok(array) and not numpy_slow.body_ok(array)
    assert not numpy_slow.body_ok(array.astype("float32"))


@pytest.mark.timeout(120)
def test_a_slow_workload_runs_through_the_harness() -> None:
    figures = harness.measure(MultiprocessingQueue, WORKLOADS["large-slow"], 2,
                              harness.Job(20, warmup=5))
    assert figures["events_per_s"] > 0 and figures["cpu_us_per_event"] > 0


def test_verifier_catches_a_gap_a_repeat_a_short_stream_and_a_damaged_body() -> None:
    small = WORKLOADS["small"]

    def verifier() -> OrderVerifier:
        return OrderVerifier(5, small.body_field, small.body_ok)

    def event(seq: int, body: str = SMALL_TEXT) -> dict[str, Any]:
        return small.event(seq, 0, body)

    gap = verifier()
    gap.check(event(0))
    with pytest.raises(DeliveryError, match="1..1 were lost"):
        gap.check(event(2))
    repeat = verifier()
    repeat.check(event(0))
    with pytest.raises(DeliveryError, match="repeated or reordered"):
        repeat.check(event(0))
    short = verifier()
    for seq in range(4):
        short.check(event(seq))
    with pytest.raises(DeliveryError, match="received 4 of 5"):
        short.finish()
    with pytest.raises(DeliveryError, match="damaged"):
        verifier().check(event(0, body="torn"))


class _SkipsEventSeven(EmitterPort):
    def __init__(self, inner: EmitterPort) -> None:
        self.inner = inner

    def emit(self, event: Any) -> None:
        if event["seq"] != 7:
            self.inner.emit(event)

    def close(self) -> None:
        self.inner.close()


class _LossyQueue(MultiprocessingQueue):
    """A real multiprocessing.Queue behind an emitter that drops one event."""

    def open_emitter(self) -> tuple[EmitterPort, Any]:
        port, address = super().open_emitter()
        return _SkipsEventSeven(port), address


def test_a_lost_event_fails_the_measurement() -> None:
    with pytest.raises(harness.MeasurementFailed, match="events 7..7 were lost"):
        harness.measure(_LossyQueue, WORKLOADS["small"], 2, harness.Job(50))


class _LateReceiver(ReceiverPort):
    """A zenoh receiver that joins only 0.3 s after the harness has let the emitter go:
    whatever the emitter puts before the join reaches it only if `start()` waited."""

    def __init__(self, open_late: Any) -> None:
        self.open_late = open_late
        self.inner: ReceiverPort | None = None

    def receive(self, timeout: float) -> list[Any]:
        if self.inner is None:
            time.sleep(0.3)
            self.inner = self.open_late()
        return self.inner.receive(timeout)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


@pytest.mark.timeout(120)
def test_zenoh_delivers_every_event_even_to_a_late_subscriber_and_leaves_nothing() -> None:
    from benchmarks.systems.zenoh_pubsub import ZenohPubSub

    class LateZenoh(ZenohPubSub):
        def open_receiver(self, index: int, address: Any) -> ReceiverPort:
            if index == 0:
                return super().open_receiver(index, address)
            return _LateReceiver(lambda: super(LateZenoh, self).open_receiver(index, address))

    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    for system, workload, events in ((LateZenoh, WORKLOADS["small"], 400),
                                     (ZenohPubSub, WORKLOADS["large"], 20)):
        figures = harness.measure(system, workload, 2, harness.Job(events, warmup=5))
        assert figures["events_per_s"] > 0
    assert multiprocess.active_children() == []
    if shm_before:  # zenoh's shared-memory transport, were it on, would leave these
        assert not [n for n in set(os.listdir("/dev/shm")) - shm_before if "zenoh" in n]


@pytest.mark.timeout(120)
def test_buses_at_scale_times_both_calls_and_leaves_nothing() -> None:
    import resource

    from benchmarks import buses_at_scale

    registry, limit = os.environ["SHMBUS_DIR"], resource.getrlimit(resource.RLIMIT_NOFILE)
    results = buses_at_scale.measure([10, 3], tries=3)
    assert [row["buses"] for row in results["rows"]] == [3, 10]
    for row in results["rows"]:
        assert row["reached"]
        for figure in (row["create_ms"], row["subscribe_ms"]):
            assert 0 < figure["min"] <= figure["median"] <= figure["max"]
    assert results["leaked"] == [] and not os.path.exists(results["registry"])
    assert results["open_files"]["per_bus"] > 0
    assert os.environ["SHMBUS_DIR"] == registry  # its own registry was only borrowed
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == limit

    # A count out of reach (open files, or time) is reported, and the rest still runs.
    results = buses_at_scale.measure([3, 10**7, 10**8], tries=2, budget_seconds=10)
    first, far, farther = results["rows"]
    assert first["reached"] and results["leaked"] == []
    assert not far["reached"] and far["why"].startswith("not tried")
    assert not farther["reached"] and farther["why"].startswith("skipped")
    out = io.StringIO()
    buses_at_scale.print_results(results, Console(file=out, width=100))
    assert "not reached" in out.getvalue() and far["why"][:40] in out.getvalue()


def test_unknown_names_and_missing_libraries_are_reported() -> None:
    with pytest.raises(ValueError, match="unknown system"):
        run.count_measurements(systems=["no-such-queue"])

    class Missing(MultiprocessingQueue):
        requires = (("no_such_module_for_shmbus_bench", "no-such-dist"),)

    assert Missing.unavailable() == (
        "no-such-dist is not installed: pip install -e '.[bench]'")


@pytest.mark.timeout(120)
def test_the_work_queue_benchmark_runs_every_system() -> None:
    from benchmarks import workqueue

    systems = [s for s in workqueue.SYSTEMS
               if s != "faster-fifo" or importlib.util.find_spec("faster_fifo")]
    figures = workqueue.measure(systems, ["10us"], {"10us": 300}, runs=1)
    assert figures["failures"] == []
    assert [row["system"] for row in figures["medians"]] == systems
    for row in figures["medians"]:
        assert row["jobs"] == 300 and row["jobs_per_second"] > 0
        # Too few jobs for the clock ticks CPU times come in: only their sum is checked.
        assert row["cpu_us_per_job"] >= row["workers_cpu_us_per_job"] >= 0
