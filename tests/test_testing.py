"""The pytest plugin shmbus ships (`shmbus.testing`), tried as a user's suite would.

Each scenario is a small test file run by a pytest of its own (`pytester`), so that
what is checked is what a user gets: the fixtures, the cleanup after a failing test, the
leak check that names only the test's own objects.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(120)


def test_a_users_test_gets_a_bus_and_a_subscriber_process(pytester: pytest.Pytester) -> None:
    pytester.makepyfile('''
        def test_workers_see_every_job(shmbus_bus, shmbus_subscriber):
            em = shmbus_bus("jobs")
            worker = shmbus_subscriber("jobs", count=3)
            em.emit_many(["a", "b", "c"])
            got = worker.result()
            assert got.events == ["a", "b", "c"] and got.error is None

        def test_a_handler_runs_in_the_subscriber(shmbus_bus, shmbus_subscriber):
            em = shmbus_bus("squares")
            worker = shmbus_subscriber("squares", handler=lambda n: n * n)
            em.emit_many(range(4))
            em.close()
            got = worker.result()
            assert got.events == [0, 1, 4, 9] and got.end == "closed"
    ''')
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_a_failing_test_does_not_keep_its_bus_from_the_next(pytester: pytest.Pytester) -> None:
    pytester.makepyfile('''
        import shmbus

        def test_fails_holding_a_bus(shmbus_bus):
            em = shmbus_bus("shared-name")
            assert em.emit("x") == 1  # fails: nobody listens; pytest keeps the traceback

        def test_reuses_the_name(shmbus_bus):
            em = shmbus_bus("shared-name")  # not BusExists
            assert em.name == "shared-name"
    ''')
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    assert "BusExists" not in result.stdout.str()


def test_a_leak_fails_the_test_that_made_it_and_is_removed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile('''
        import os, signal
        import shmbus

        def test_leaks(shmbus_registry):
            em = shmbus.EventEmitter("leaky")
            sub = em.subscribe()
            # Vanish without closing, as a crashed process would: nothing is removed.
            em._closed = sub._closed = True

        def test_next_is_clean(shmbus_registry):
            pass
    ''')
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    assert "the test left shared objects behind" in result.stdout.str()


def test_a_subscriber_still_draining_a_closed_bus_is_not_a_leak(
        pytester: pytest.Pytester) -> None:
    # Fixtures in this order close the bus first: the subscriber then drains and leaves,
    # and must be given the moment that takes instead of being killed halfway.
    pytester.makepyfile('''
        import pytest
        import shmbus

        def test_subscriber_first(shmbus_subscriber, shmbus_bus):
            em = shmbus_bus("drained")
            shmbus_subscriber("drained")  # no count: receives until the bus closes
            em.emit_many(range(1000))

        def test_a_missing_bus_is_what_subscribe_raises(shmbus_subscriber):
            with pytest.raises(shmbus.BusNotFound):
                shmbus_subscriber("nobody", wait=0.1)
    ''')
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
