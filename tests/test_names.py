"""Names of a bus's shared objects: short, portable, and never colliding."""

from __future__ import annotations

import os
import re
import struct

import pytest

import shmbus
from shmbus import _control, _names, _platform, _registry
from tests import helpers


LONGEST_TOKEN = "ffffffff"
LARGEST_ID = 2**64 - 1
"""Subscriber ids are u64 words of the control block."""
LARGEST_NONCE = 2**32 - 1
"""Large-event segments are named from a random u32."""

MACOS_NAME_MAX = 31
"""PSHMNAMLEN and PSEMNAMLEN: macOS refuses longer shm_open/sem_open names."""

MACOS_NAME_MAX_COUNTING_NUL = 30
"""xnu's sem_open (and shm_open before macOS 10.15) compares the length copyinstr()
reports, which counts the terminating NUL, with 31: 30 characters is what always works."""


def names_of(token: str, sub_id: int, nonce: int) -> dict[str, str]:
    return {
        "control": _names.control_name(token),
        "ring": _names.ring_name(token, sub_id),
        "data semaphore": _names.data_sem_name(token, sub_id),
        "space semaphore": _names.space_sem_name(token, sub_id),
        "arena": _names.arena_name(token, nonce),
        "oversized event": _names.oversized_name(token, nonce),
    }


def test_tokens_are_never_longer_than_eight_hex_digits() -> None:
    assert _registry._TOKEN.fullmatch(LONGEST_TOKEN)
    assert not _registry._TOKEN.fullmatch(LONGEST_TOKEN + "f")
    assert len(_names.PREFIX + LONGEST_TOKEN) == 12


@pytest.mark.parametrize("sub_id, nonce", [(0, 0), (2**32 - 1, LARGEST_NONCE),
                                           (LARGEST_ID, LARGEST_NONCE)])
def test_longest_names_fit_macos_limit(sub_id: int, nonce: int) -> None:
    for kind, name in names_of(LONGEST_TOKEN, sub_id, nonce).items():
        assert len(name) <= MACOS_NAME_MAX, f"{kind} {name!r} has {len(name)} characters"
        assert re.fullmatch(r"/[A-Za-z0-9_]+", name), f"{kind} {name!r}: not portable"
        assert LONGEST_TOKEN in name


def test_segment_names_fit_even_counting_the_nul() -> None:
    for sub_id, nonce in [(LARGEST_ID, LARGEST_NONCE)]:
        names = names_of(LONGEST_TOKEN, sub_id, nonce)
        for kind in ("control", "ring", "arena", "oversized event"):
            assert len(names[kind]) <= MACOS_NAME_MAX_COUNTING_NUL, (kind, names[kind])


def test_semaphore_names_fit_sem_open_for_any_reachable_subscriber_id() -> None:
    # One id per subscribe(): 2**60 of them is beyond any bus's lifetime.
    for sub_id in (0, 2**32, 2**60 - 1):
        names = names_of(LONGEST_TOKEN, sub_id, 0)
        for kind in ("data semaphore", "space semaphore"):
            assert len(names[kind]) <= MACOS_NAME_MAX_COUNTING_NUL, (kind, names[kind])


def test_subscriber_ids_stop_where_semaphore_names_would_stop_fitting() -> None:
    name = f"{_names.PREFIX}test{os.getpid():x}"
    control = _control.ControlBlock.initialize(_platform.create_segment(name, _control.SIZE),
                                               512, 1, 1 << 20)
    try:
        struct.pack_into("<Q", control.buf, _control._NEXT_SUB_ID, _control.MAX_SUB_ID - 1)
        assert control.allocate_sub_id() == _control.MAX_SUB_ID - 1
        with pytest.raises(shmbus.ShmBusError, match="recreate the bus"):
            control.allocate_sub_id()
    finally:
        control.close()
        _platform.unlink_segment(name)
    names = names_of(LONGEST_TOKEN, _control.MAX_SUB_ID - 1, 0)
    for kind in ("data semaphore", "space semaphore"):
        assert len(names[kind]) <= MACOS_NAME_MAX_COUNTING_NUL, (kind, names[kind])


def test_names_of_one_kind_never_collide() -> None:
    # Hex ids end in letters too: "r1" + "d" must not be confused with "r1d".
    ids = [0, 1, 0xD, 0x1D, 0xDD, 0x1DD, 0x5, 0x15, LARGEST_ID]
    segments = [_names.control_name(LONGEST_TOKEN)]
    segments += [_names.ring_name(LONGEST_TOKEN, i) for i in ids]
    nonces = [0, 1, 0xD, 0x1D, LARGEST_NONCE]
    segments += [_names.arena_name(LONGEST_TOKEN, n) for n in nonces]
    segments += [_names.oversized_name(LONGEST_TOKEN, n) for n in nonces]
    semaphores = [_names.data_sem_name(LONGEST_TOKEN, i) for i in ids]
    semaphores += [_names.space_sem_name(LONGEST_TOKEN, i) for i in ids]
    assert len(set(segments)) == len(segments)
    assert len(set(semaphores)) == len(semaphores)


@pytest.mark.skipif(not os.path.isdir(helpers.SHM_DIR), reason="needs a listable /dev/shm")
def test_a_bus_with_the_longest_name_creates_only_short_names() -> None:
    name = "n" * 128
    with shmbus.EventEmitter(name) as em:
        sub = em.subscribe()
        em.emit(b"z" * 10_000, timeout=5)  # the arena too
        created = helpers.objects_of(helpers.token_of(em))
        assert sub.recv(timeout=5) == b"z" * 10_000
        sub.close()
    assert len(created) == 5, created  # control, ring, 2 semaphores, arena
    for entry in created:
        posix_name = "/" + entry.removeprefix("sem.")
        assert len(posix_name) <= MACOS_NAME_MAX, posix_name
        assert "nnnn" not in posix_name
