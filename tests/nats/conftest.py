"""What the NATS layer's tests share: a bus with a bridge running, against a real server.

`bridged` gives a bus (an emitter in this process) with a `Bridge` running on a thread,
publishing it to the test's own `nats-server -js` (`tests/nats_server.py`). Both are
stopped after the test, pass or fail.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import shmbus
from shmbus.nats import Bridge
from tests.nats_server import NatsServer


class BridgedBus:
    """A bus and its bridge: `url()` names it for remote subscribers."""

    def __init__(self, name: str, server: NatsServer, **emitter_options: Any) -> None:
        self.name = name
        self.server = server
        self.emitter = shmbus.EventEmitter(name, **emitter_options)
        self.bridge = Bridge(name, server.url)
        self.error: BaseException | None = None
        # `Bridge.run` on a thread of our own rather than `Bridge.start`: `finish` waits
        # for the bridge to end with its bus, where `Bridge.stop` would cut it short.
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self.bridge.wait_ready(10):
            raise AssertionError(f"the bridge of {name!r} was not ready within 10 s "
                                 f"({self.error!r})")

    def url(self, durable: str | None = None) -> str:
        query = f"?durable={durable}" if durable else ""
        return f"{self.server.url}/{self.name}{query}"

    def finish(self, timeout: float = 15.0) -> None:
        """Close the bus and wait for the bridge to store everything and the end marker."""
        self.emitter.close()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the bridge did not end with its bus"
        assert self.error is None, self.error

    def stop(self) -> None:
        self.emitter.close()
        self.bridge.stop(10)
        self._thread.join(10)

    def _run(self) -> None:
        try:
            self.bridge.run()
        except BaseException as exc:
            self.error = exc


@pytest.fixture
def bridged(nats_server: NatsServer) -> Iterator[Any]:
    """A factory of `BridgedBus`es, each stopped after the test."""
    made: list[BridgedBus] = []

    def make(name: str, **emitter_options: Any) -> BridgedBus:
        bus = BridgedBus(name, nats_server, **emitter_options)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.stop()
