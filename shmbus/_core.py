"""Which implementation of the ring protocol runs: compiled, or pure Python.

## Shape

`Fanout`, `Reader` and `Lock` (see `_protocol`) come from the compiled core,
`shmbus._ringcore`, when the package's build made it, and from `_protocol` otherwise,
or when `SHMBUS_CORE=python` asks for it. Both work on the same memory layout with the
same rules, so processes with different cores share a bus. `NAME` says which one this
process runs ("c" or "python"), as `shmbus --version` and `shmbus ls` show.

## Why a choice at all

The compiled core is several times faster per event, but a machine without a compiler
must still install and run shmbus: the pure-Python core is the fallback, tested in CI
as fully as the other.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING

from . import _wait
from ._errors import InvalidArgument, shown

CORE_ENV = "SHMBUS_CORE"

def _implementation(wanted: str) -> ModuleType:
    wanted = wanted.strip().lower()
    if wanted not in ("", "c", "python"):
        raise InvalidArgument(f"{CORE_ENV}={shown(wanted)} is not a core; use 'c' or 'python'")
    if wanted != "python":
        try:
            return importlib.import_module("shmbus._ringcore")
        except ImportError:
            if wanted == "c":
                raise ImportError(
                    f"{CORE_ENV}=c, but the compiled core (shmbus._ringcore) was not built: "
                    "reinstall shmbus where a C compiler is found, or unset "
                    f"{CORE_ENV} to run the pure-Python one"
                ) from None
    return importlib.import_module("shmbus._protocol")


def use(name: str) -> None:
    """Run core `name` ("c" or "python") in this process from now on, in every emitter
    and subscription opened after this call (package-internal).

    For a process that could not choose with `SHMBUS_CORE` before it imported shmbus:
    a child that the benchmark suite forks from its own process, say.
    """
    chosen = _implementation(name)
    # Rebound, as the import bound them (for the type checker they are `_protocol`'s).
    globals().update(NAME=chosen.NAME, Fanout=chosen.Fanout, Reader=chosen.Reader,
                     Lock=chosen.Lock)
    _plug_in(chosen)
    package = sys.modules.get(__package__)
    if package is not None:
        package.CORE = chosen.NAME  # type: ignore[attr-defined]


def _plug_in(chosen: ModuleType) -> None:
    """The compiled core's held wait where `_wait` looks for it (the Python one has none)."""
    _wait.TimedWaiter.held_acquire = getattr(chosen, "held_acquire", None)


if TYPE_CHECKING:
    from ._protocol import NAME, Fanout, Lock, Reader, emit_method
else:
    _chosen = _implementation(os.environ.get(CORE_ENV, ""))
    NAME, Fanout, Reader, Lock = _chosen.NAME, _chosen.Fanout, _chosen.Reader, _chosen.Lock
    # Applied once, as the class is made (`use` leaves it: it steps aside for the other
    # core's objects).
    emit_method = _chosen.emit_method
    _plug_in(_chosen)

__all__ = ["NAME", "Fanout", "Lock", "Reader", "emit_method", "use"]
