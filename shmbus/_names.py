"""Names of a bus's shared objects: short, made from the bus's token, never its name.

## Shape

Every object of one bus is named from the bus's random *token* (8 hex digits drawn when
the emitter creates it), never from the user's bus name:

    /sb_<token>               the control block (one per bus)
    /sb_<token>_r<id>         subscriber <id>'s ring, with semaphores ..._r<id>d (data)
                              and ..._r<id>s (space)
    /sb_<token>_q<id>         the claims of queue <id>: a group's or a durable
                              subscription's ring, read by its members (see `_group`)
    /sb_<token>_a<nonce>      an arena of large events (see `_arena`)
    /sb_<token>_x<nonce>      one event too large for the arena

A nonce is 8 random hex digits, drawn when the segment is made: another user who lists
`/dev/shm` sees the token, but cannot guess the next large-event name and take it
first. The longest is 23 characters, under macOS's limit of 31 (30 with the NUL that its
`sem_open` counts), whatever the bus is called; two buses cannot collide because
creation is exclusive (`O_EXCL`) and a clash draws a new token.
"""

from __future__ import annotations

PREFIX = "/sb_"


def control_name(token: str) -> str:
    return f"{PREFIX}{token}"


def ring_name(token: str, sub_id: int) -> str:
    return f"{PREFIX}{token}_r{sub_id:x}"


def data_sem_name(token: str, sub_id: int) -> str:
    return ring_name(token, sub_id) + "d"


def space_sem_name(token: str, sub_id: int) -> str:
    return ring_name(token, sub_id) + "s"


def queue_name(token: str, sub_id: int) -> str:
    return f"{PREFIX}{token}_q{sub_id:x}"


def large_name(token: str, kind: str, nonce: int) -> str:
    return f"{PREFIX}{token}_{kind}{nonce:08x}"


def arena_name(token: str, nonce: int) -> str:
    return large_name(token, "a", nonce)


def oversized_name(token: str, nonce: int) -> str:
    return large_name(token, "x", nonce)
