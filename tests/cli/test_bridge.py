"""`shmbus bridge`: a bus published to NATS JetStream, read back, stopped by Ctrl-C."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

import shmbus
from tests.cli.command import RUN_TIMEOUT, assert_one_error_line, cli_process, run_cli
from tests.nats_server import NatsServer, free_port


@pytest.mark.timeout(60)
def test_bridge_publishes_the_bus_to_nats_and_sums_up_when_the_bus_closes(
        registry: Path, nats_server: NatsServer) -> None:
    with shmbus.EventEmitter("news") as em, \
            cli_process(registry, "bridge", "news", "--nats", nats_server.url) as proc:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready == (f"bridging bus 'news' to {nats_server.url} (stream SHMBUS_news); "
                         "Ctrl-C to stop\n"), proc.communicate()
        with shmbus.subscribe(f"{nats_server.url}/news") as remote:
            for seq in range(5):
                em.emit({"seq": seq})
            em.close()
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
            received = [remote.recv(timeout=10) for _ in range(5)]
            with pytest.raises(shmbus.Closed):
                remote.recv(timeout=10)

    assert proc.returncode == 0, err
    assert out == (f"bus 'news' ended: published 5 events to {nats_server.url} "
                   "(stream SHMBUS_news)\n")
    assert received == [{"seq": seq} for seq in range(5)]


@pytest.mark.timeout(60)
def test_bridge_ctrl_c_exits_130_quietly_and_leaves_its_durable_subscription(
        registry: Path, nats_server: NatsServer) -> None:
    with shmbus.EventEmitter("news") as em, cli_process(
            registry, "bridge", "news", "--nats", nats_server.url, "--stream", "NEWS") as proc:
        assert proc.stdout is not None
        assert "(stream NEWS)" in proc.stdout.readline()
        em.emit("one")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
        left = shmbus.stats("news").subscribers

    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    assert err.startswith("shmbus: stopped: published ")
    # Its durable subscription stays, without an owner, for the next bridge.
    assert [s.alive for s in left] == [False]
    assert ("shmbus: bus 'news' keeps what is emitted now for the next bridge for 60 s "
            "(shmbus unsubscribe news bridge.NEWS lets go of it)") in err


@pytest.mark.timeout(60)
def test_bridge_without_durable_leaves_nothing_when_stopped(
        registry: Path, nats_server: NatsServer) -> None:
    with shmbus.EventEmitter("news") as em, cli_process(
            registry, "bridge", "news", "--nats", nats_server.url, "--no-durable") as proc:
        assert proc.stdout is not None
        proc.stdout.readline()
        em.emit("one")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
        left = shmbus.stats("news").subscribers

    assert proc.returncode == 130, out + err
    assert left == ()
    assert "keeps what is emitted" not in err


@pytest.mark.timeout(60)
def test_bridge_to_an_unreachable_server_is_one_error_line(registry: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    with shmbus.EventEmitter("news"):
        result = run_cli(registry, "bridge", "news", "--nats", url)

    assert_one_error_line(result, f"no NATS server answers at {url}")
    assert result.stdout == ""
