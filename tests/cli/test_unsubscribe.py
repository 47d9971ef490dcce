"""`shmbus unsubscribe NAME DURABLE`: a durable subscription without an owner is removed."""

from __future__ import annotations

from pathlib import Path

import pytest

import shmbus
from tests.cli.command import assert_one_error_line, run_cli

pytestmark = pytest.mark.timeout(60)


def test_unsubscribe_removes_an_ownerless_durable_subscription(registry: Path) -> None:
    with shmbus.EventEmitter("jobs", capacity=4) as em:
        shmbus.subscribe("jobs", durable="bridge1").close()
        for n in range(4):
            em.emit(n, timeout=1)  # kept for it: the ring is full now

        result = run_cli(registry, "unsubscribe", "jobs", "bridge1")

        assert result.returncode == 0, result.stderr
        assert result.stdout == "removed durable subscription 'bridge1' of bus 'jobs'\n"
        assert em.emit(4, timeout=1) == 0  # nobody keeps it any more
        assert em.subscriber_count == 0


def test_unsubscribe_refuses_what_a_live_process_owns_or_what_is_not_there(
        registry: Path) -> None:
    with shmbus.EventEmitter("jobs") as em, em.subscribe(durable="mine"):
        assert_one_error_line(run_cli(registry, "unsubscribe", "jobs", "mine"),
                              "is owned by a live process")
        assert_one_error_line(run_cli(registry, "unsubscribe", "jobs", "other"),
                              "bus 'jobs' has no durable subscription 'other'")
        assert_one_error_line(run_cli(registry, "unsubscribe", "jobs", "a/b"),
                              "invalid durable name")
    assert_one_error_line(run_cli(registry, "unsubscribe", "jobs", "mine"),
                          "no bus named 'jobs'")
