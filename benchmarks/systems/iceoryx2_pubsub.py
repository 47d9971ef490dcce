"""iceoryx2 publish-subscribe (Python bindings), set to block instead of overwriting.

Configuration, matched to the others: a `Slice[c_uint8]` service with safe overflow off
(`enable_safe_overflow(False)`), subscriber buffer 256 (`subscriber_max_buffer_size` and
each subscriber's `buffer_size`), no history, and a publisher whose backpressure
strategy is `RetryUntilDelivered`: `send` waits (retrying) until every subscriber's
buffer has room. iceoryx2 0.10 calls this the backpressure strategy; older releases
called it the unable-to-deliver strategy, `Block`. The publisher may loan 2 samples; the
data segment is sized by iceoryx2 itself for subscribers x (buffer + borrowed) samples,
so a loan never fails. One `send` reaches every subscriber (iceoryx2 fans out itself).

What does not match exactly:

- Payloads must be shared-memory-compatible, so the emitter pickles each event once
  (protocol 5) and copies the bytes into the loaned sample; receivers unpickle from the
  sample in place. Sample slots are sized to the largest pickle up front (an 8 MiB event
  x 4 x 258 samples is an 8 GiB sparse segment; only touched pages use memory).
- iceoryx2's subscribers cannot block on data: `receive()` returns None when empty.
  Every other system here sleeps in the kernel while empty, so this one does too in
  iceoryx2's documented way, with an event service beside the data: the emitter
  `notify()`s after each send and an idle receiver `timed_wait`s on its listener. A
  receiver that busy-polls instead is faster on spare cores and burns one per
  subscriber; on this 2-core box it starves the emitter.
- A publisher that finds a buffer full retries in a loop, it does not sleep.

A killed process leaves its node's files in /dev/shm and /tmp/iceoryx2; `cleanup` then
removes dead nodes' resources from a throwaway child, so the harness process never
holds an iceoryx2 node across a fork. iceoryx2 keeps one 16-byte
`iox2_*.global_mgmt` file in /dev/shm for good, made by the first use on the machine.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import time
from itertools import count
from typing import Any

from benchmarks.systems import EmitterPort, ReceiverPort, System

_measurements = count()
IDLE_WAIT_SECONDS = 0.1
LOANED_SAMPLES = 2
BORROWED_SAMPLES = 2


def _iox() -> Any:
    import iceoryx2

    iceoryx2.set_log_level(iceoryx2.LogLevel.Error)  # no "no config file" chatter
    return iceoryx2


def _node(iox: Any) -> Any:
    return (iox.NodeBuilder.new().signal_handling_mode(iox.SignalHandlingMode.Disabled)
            .create(iox.ServiceType.Ipc))


class _Emitter(EmitterPort):
    def __init__(self, system: "Iceoryx2PubSub") -> None:
        iox = _iox()
        self.node = _node(iox)
        self.service = system.data_service(iox, self.node).create()
        self.publisher = (
            self.service.publisher_builder()
            .initial_max_slice_len(system.workload.message_bytes)
            .allocation_strategy(iox.AllocationStrategy.PowerOfTwo)
            .backpressure_strategy(iox.BackpressureStrategy.RetryUntilDelivered)
            .max_loaned_samples(LOANED_SAMPLES)
            .create()
        )
        self.wake_service = system.wake_service(iox, self.node).create()
        self.notifier = self.wake_service.notifier_builder().create()

    def start(self) -> None:
        self.publisher.update_connections()

    def emit(self, event: Any) -> None:
        data = pickle.dumps(event, protocol=5)
        sample = self.publisher.loan_slice_uninit(len(data))
        ctypes.memmove(sample.payload_ptr, data, len(data))
        sample.assume_init().send()
        self.notifier.notify()

    def close(self) -> None:
        self.notifier.delete()
        self.publisher.delete()
        del self.wake_service, self.service, self.node


class _Receiver(ReceiverPort):
    def __init__(self, system: "Iceoryx2PubSub") -> None:
        self.iox = iox = _iox()
        self.node = _node(iox)
        self.service = system.data_service(iox, self.node).open()
        self.subscriber = self.service.subscriber_builder().buffer_size(system.bound).create()
        self.wake_service = system.wake_service(iox, self.node).open()
        self.listener = self.wake_service.listener_builder().create()

    def receive(self, timeout: float) -> list[Any]:
        sample = self.subscriber.receive()
        if sample is None:
            deadline = time.monotonic() + timeout
            while (sample := self.subscriber.receive()) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                wait = self.iox.Duration.from_secs_f64(min(left, IDLE_WAIT_SECONDS))
                self.listener.timed_wait(wait)
        try:
            return [pickle.loads(sample.payload().as_memory_view())]
        finally:
            sample.delete()

    def close(self) -> None:
        self.listener.delete()
        self.subscriber.delete()
        del self.wake_service, self.service, self.node


class Iceoryx2PubSub(System):
    name = "iceoryx2"
    requires = (("iceoryx2", "iceoryx2"),)

    def bound_note(self) -> str:
        return f"subscriber buffer {self.bound} samples, RetryUntilDelivered"

    def shm_prefixes(self, address: Any) -> tuple[str, ...]:
        return ("iox2_",)  # all of iceoryx2's: its names hash the service name

    def prepare(self) -> None:
        self.service_name = f"shmbus-bench/{os.getpid()}/{next(_measurements)}"

    def data_service(self, iox: Any, node: Any) -> Any:
        return (
            node.service_builder(iox.ServiceName.new(self.service_name))
            .publish_subscribe(iox.Slice[ctypes.c_uint8])
            .enable_safe_overflow(False)
            .subscriber_max_buffer_size(self.bound)
            .subscriber_max_borrowed_samples(BORROWED_SAMPLES)
            .history_size(0)
            .max_publishers(1)
            .max_subscribers(self.subscribers)
        )

    def wake_service(self, iox: Any, node: Any) -> Any:
        return (node.service_builder(iox.ServiceName.new(self.service_name + "/wake"))
                .event().max_notifiers(1).max_listeners(self.subscribers))

    def open_emitter(self) -> tuple[EmitterPort, Any]:
        return _Emitter(self), None

    def open_receiver(self, index: int, address: Any) -> ReceiverPort:
        return _Receiver(self)

    def cleanup(self, failed: bool) -> None:
        if failed:
            _in_child(_remove_dead_nodes)


def _remove_dead_nodes() -> None:
    iox = _iox()
    node = _node(iox)
    node.try_cleanup_dead_nodes()


def _in_child(function: Any) -> None:
    import multiprocess

    child = multiprocess.get_context("fork").Process(target=function, daemon=True)
    child.start()
    child.join(30)
    if child.is_alive():
        child.kill()
        child.join()
