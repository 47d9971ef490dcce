"""A bounded chaos run for CI; `python -m tests.chaos.driver --minutes 10` is the soak.

Each test prints its seed and figures; a failure message names the seed, and
`pytest tests/chaos --chaos-seed N` replays it; `--chaos-seconds S` sets how long each
timed test runs (12 s unless asked).
"""

from __future__ import annotations

import random

import pytest

from tests.chaos import driver

pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("wait_mode")]


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    chosen = request.config.getoption("--chaos-seed")
    return int(chosen) if chosen is not None else random.randrange(1 << 30)


@pytest.fixture
def seconds(request: pytest.FixtureRequest) -> float:
    return float(request.config.getoption("--chaos-seconds"))


@pytest.mark.timeout(120)
def test_subscribers_killed_stopped_and_joining_lose_nothing(seed, seconds, capsys):
    figures = driver.subscriber_chaos(seed, seconds=seconds)
    with capsys.disabled():
        print(f"\n  subscriber chaos, seed {seed}: {figures}")
    assert figures.kills > 0 and figures.events > 0


@pytest.mark.timeout(120)
def test_a_group_with_members_killed_at_random_loses_nothing(seed, seconds, capsys):
    figures = driver.group_chaos(seed, seconds=seconds)
    with capsys.disabled():
        print(f"\n  group chaos, seed {seed}: {figures}")
    assert figures.kills > 0 and figures.events > 0


@pytest.mark.timeout(120)
def test_a_killed_emitter_loses_no_returned_event(seed, capsys):
    figures = driver.emitter_chaos(seed, rounds=8)
    with capsys.disabled():
        print(f"\n  emitter chaos, seed {seed}: {figures}")
    assert figures.kills == 8
