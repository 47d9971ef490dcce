"""eclipse-zenoh 1.x publish-subscribe between peers on loopback TCP, set to block.

Configuration, matched to the others: every process opens a zenoh session in `peer`
mode; the emitter's listens on `tcp/127.0.0.1:<a free port>`, each subscriber's listens
nowhere and connects to it, and scouting (multicast and gossip) is off, so nothing
leaves the machine and no subscriber finds another. One publisher, declared with
`CongestionControl.BLOCK` and `Reliability.RELIABLE`, reaches every subscriber (zenoh
fans out itself); each subscriber receives through a `FifoChannel(256)`. Events are
pickled once (protocol 5) and put as payload bytes; receivers unpickle them.

What does not match exactly:

- The bound is not 256 events. BLOCK blocks `put` only when the emitter's own
  transmission queue for a subscriber's link is full (2 batches of 64 KiB); it knows
  nothing of the subscriber's channel. A full `FifoChannel` makes the subscriber's
  receiving task wait, which stops it reading the TCP socket, and the backpressure
  reaches the emitter only once the kernel's socket buffers on both sides are full
  too. Measured with a subscriber that never reads: the emitter put 261 events of
  1 MiB and 257 of 8 MiB before blocking, but about 41,000 of 93 bytes (some 4 MB in
  socket buffers and zenoh's batches). Small events therefore see a far larger
  effective buffer than 256; large ones about 256 plus a few.
- BLOCK waits only `wait_before_close` (5 s by default) for room, then closes the
  transport and drops whatever was in flight to that subscriber. It is raised to the
  suite's stall timeout (30 s), so a slow subscriber stalls the emitter instead.
- zenoh's shared-memory transport optimization (on by default, for payloads from
  3 KiB) is off: the job here is loopback TCP, and in trials it left its `*.zenoh`
  segments in /dev/shm after every process had exited. With it on, 1 MiB events to
  one subscriber ran about 1.6x faster in a trial.
- zenoh has no receive with a timeout, only a blocking `recv()` that checks for
  signals every 100 ms and a non-blocking `try_recv()`. An idle receiver blocks in
  `recv()` with a SIGALRM timer armed for the timeout (the subscriber processes are
  the harness's, each in its main thread): it sleeps like the others, where polling
  `try_recv()` would burn a core or add latency.
- Payload bytes are copied on both sides: into zenoh's buffer on `put` (it copies a
  `bytes` object), and out of it on receipt (`ZBytes` offers no buffer to unpickle
  from in place); TCP adds its own copies.

Readiness: a subscriber declared in its own process is known to the emitter's session
only once its declaration has crossed the link, and a `put` before that reaches no
one. So `start()` puts empty probe payloads on the data key every few milliseconds
until every subscriber has answered one on a key of its own (`<prefix>/ready/<index>`);
receivers answer every probe and drop it. Probes and events go through the same
publisher, in order, so all probes arrive before the first event. `close()` returns
once no subscriber is left on the data key (each leaves after taking all it wants; at
most the stall timeout), so nothing in flight is cut off, then closes the session;
zenoh starts no process and, with shared memory off, writes no file.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import signal
import socket
import time
from itertools import count
from typing import Any

from benchmarks.systems import STALL_SECONDS, EmitterPort, ReceiverPort, System

_measurements = count()
PROBE_SECONDS = 0.005
"""How often `start()` probes while some subscriber has not answered."""
OPEN_ATTEMPTS = 5
"""Free ports tried: another process may take the one picked before zenoh binds it."""


def _zenoh() -> Any:
    # Imported by name, typed Any: the test extra (where CI runs mypy) has no zenoh, and
    # 1.10's stubs say `Publisher.matching_status` is a bool where it returns a
    # MatchingStatus.
    return importlib.import_module("zenoh")


def _config(zenoh: Any, listen: list[str], connect: list[str]) -> Any:
    config = zenoh.Config()
    settings = {
        "mode": "peer",
        "listen/endpoints": listen,
        "listen/exit_on_failure": True,
        "connect/endpoints": connect,
        "connect/exit_on_failure": True,
        "scouting/multicast/enabled": False,
        "scouting/gossip/enabled": False,
        "transport/shared_memory/enabled": False,
        "transport/link/tx/queue/congestion_control/block/wait_before_close":
            int(STALL_SECONDS * 1e6),  # microseconds
    }
    for key, value in settings.items():
        config.insert_json5(key, json.dumps(value))
    return config


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _Emitter(EmitterPort):
    def __init__(self, prefix: str, subscribers: int) -> None:
        zenoh = _zenoh()
        self.subscribers = subscribers
        self.session, self.endpoint = self._open(zenoh)
        self.publisher = self.session.declare_publisher(
            f"{prefix}/data", congestion_control=zenoh.CongestionControl.BLOCK,
            reliability=zenoh.Reliability.RELIABLE,
        )
        self.answers = self.session.declare_subscriber(f"{prefix}/ready/*")

    @staticmethod
    def _open(zenoh: Any) -> tuple[Any, str]:
        for attempt in range(OPEN_ATTEMPTS):
            endpoint = f"tcp/127.0.0.1:{_free_port()}"
            try:
                return zenoh.open(_config(zenoh, [endpoint], [])), endpoint
            except zenoh.ZError:
                if attempt == OPEN_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def start(self) -> None:
        """Probe until every subscriber has answered: then every later put reaches all."""
        answered: set[str] = set()
        deadline = time.monotonic() + STALL_SECONDS
        while len(answered) < self.subscribers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.subscribers - len(answered)} zenoh subscriber(s) "
                                   f"never answered a probe in {STALL_SECONDS:.0f} s")
            self.publisher.put(b"")
            time.sleep(PROBE_SECONDS)
            while (answer := self.answers.try_recv()) is not None:
                answered.add(str(answer.key_expr))
        self.answers.undeclare()  # answers to the probes still in flight go nowhere

    def emit(self, event: Any) -> None:
        self.publisher.put(pickle.dumps(event, protocol=5))

    def close(self) -> None:
        deadline = time.monotonic() + STALL_SECONDS
        while _matching(self.publisher) and time.monotonic() < deadline:
            time.sleep(PROBE_SECONDS)
        self.publisher.undeclare()
        self.session.close()


def _matching(publisher: Any) -> bool:
    """Whether any subscriber is still declared on the publisher's key."""
    status = publisher.matching_status
    return bool(getattr(status, "matching", status))


class _Late(Exception):
    """The SIGALRM timer of a receive ran out."""


def _alarm(signum: int, frame: Any) -> None:
    raise _Late


class _Receiver(ReceiverPort):
    def __init__(self, prefix: str, index: int, endpoint: str, capacity: int) -> None:
        zenoh = _zenoh()
        self.session = zenoh.open(_config(zenoh, [], [endpoint]))
        self.subscriber = self.session.declare_subscriber(
            f"{prefix}/data", zenoh.handlers.FifoChannel(capacity))
        self.answer = self.session.declare_publisher(
            f"{prefix}/ready/{index}", congestion_control=zenoh.CongestionControl.BLOCK,
            reliability=zenoh.Reliability.RELIABLE,
        )
        signal.signal(signal.SIGALRM, _alarm)

    def receive(self, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        while True:
            sample = self.subscriber.try_recv()
            if sample is None:
                sample = self._wait(deadline - time.monotonic())
                if sample is None:
                    return []
            data = sample.payload.to_bytes()
            if data:
                return [pickle.loads(data)]
            self.answer.put(b"")  # a probe: say this subscriber is there, and drop it

    def _wait(self, timeout: float) -> Any:
        """The next sample, or None after `timeout` seconds."""
        if timeout <= 0:
            return None
        sample = None
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            sample = self.subscriber.recv()
        except _Late:
            pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return sample

    def close(self) -> None:
        self.answer.undeclare()
        self.subscriber.undeclare()
        self.session.close()


class ZenohPubSub(System):
    name = "zenoh"
    requires = (("zenoh", "eclipse-zenoh"),)

    def bound_note(self) -> str:
        return (f"FifoChannel({self.bound}) per subscriber + the TCP socket buffers, "
                "BLOCK congestion control")

    def prepare(self) -> None:
        self.prefix = f"shmbus-bench/{os.getpid()}/{next(_measurements)}"

    def open_emitter(self) -> tuple[EmitterPort, Any]:
        port = _Emitter(self.prefix, self.subscribers)
        return port, port.endpoint

    def open_receiver(self, index: int, address: Any) -> ReceiverPort:
        return _Receiver(self.prefix, index, address, self.bound)
