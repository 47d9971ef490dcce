"""pyzmq PUSH/PULL over `ipc://`, one socket pair per subscriber.

Bound: `SNDHWM = RCVHWM = 128` messages, so the two queues zmq keeps per pair hold 256
events, and a PUSH socket whose only peer is full blocks `send` (PUSH never drops). That
is not an exact 256 like the others: between the two queues sits the kernel's Unix
socket buffer (a few hundred KiB, i.e. thousands of small events), and zmq moves
messages between its queues and the socket in batches. Small events therefore see a
larger effective buffer than 256; large ones roughly 256 plus one or two.

zmq carries bytes, so the emitter pickles each event once (protocol 5) and sends the
same bytes to every socket, zero-copy (`copy=False`) when they exceed 64 KiB, where
pyzmq would copy anyway below. `LINGER=-1` and `Context.term()` at close make sure
nothing still queued is dropped. The sockets live in a private temporary directory,
removed at cleanup.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from typing import Any

from benchmarks.systems import STALL_SECONDS, EmitterPort, ReceiverPort, System

HWM = 128
ZERO_COPY_FROM = 1 << 16


class _Emitter(EmitterPort):
    def __init__(self, addresses: list[str], copy: bool) -> None:
        import zmq

        self.zmq = zmq
        self.context = zmq.Context()
        self.copy = copy
        self.sockets = []
        for address in addresses:
            sock = self.context.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, HWM)
            sock.setsockopt(zmq.LINGER, -1)
            sock.setsockopt(zmq.SNDTIMEO, int(STALL_SECONDS * 1000))
            sock.bind(address)
            self.sockets.append(sock)

    def emit(self, event: Any) -> None:
        data = pickle.dumps(event, protocol=5)
        for sock in self.sockets:
            sock.send(data, 0, self.copy)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.context.term()  # returns once every queued message is handed over


class _Receiver(ReceiverPort):
    def __init__(self, address: str, copy: bool) -> None:
        import zmq

        self.zmq = zmq
        self.context = zmq.Context()
        self.copy = copy
        self.socket = self.context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.RCVHWM, HWM)
        self.socket.connect(address)

    def receive(self, timeout: float) -> list[Any]:
        try:
            return [self._load(self.zmq.NOBLOCK)]
        except self.zmq.Again:  # poll only when idle: one call fewer per busy receive
            if not self.socket.poll(int(timeout * 1000)):
                return []
            return [self._load(0)]

    def _load(self, flags: int) -> Any:
        if self.copy:
            return pickle.loads(self.socket.recv(flags))
        return pickle.loads(self.socket.recv(flags, copy=False).buffer)

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


class ZmqPushPull(System):
    name = "zmq"
    requires = (("zmq", "pyzmq"),)

    def bound_note(self) -> str:
        return f"SNDHWM {HWM} + RCVHWM {HWM} messages + the kernel socket buffer"

    def prepare(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="sbbench-zmq-")
        self.addresses = [f"ipc://{os.path.join(self.directory, str(i))}"
                          for i in range(self.subscribers)]
        self.copy = self.workload.message_bytes < ZERO_COPY_FROM

    def open_emitter(self) -> tuple[EmitterPort, Any]:
        return _Emitter(self.addresses, self.copy), None

    def open_receiver(self, index: int, address: Any) -> ReceiverPort:
        return _Receiver(self.addresses[index], self.copy)

    def cleanup(self, failed: bool) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
