"""The control block: a corrupt, truncated or foreign one is refused with a clear error."""

from __future__ import annotations

import pytest

import shmbus
from shmbus import _control, _names, _platform
from tests import helpers

pytestmark = pytest.mark.timeout(30)


_TRUNCATED = _platform.segment_size(16)
"""What a subscriber sees of a 16-byte control block: a whole page where segments are
sized in pages (macOS), so there only its content gives it away."""


@pytest.mark.parametrize("content, message", [
    (b"x" * 16, f"control block is {_TRUNCATED} bytes" if _TRUNCATED < _control.SIZE
     else "not a shmbus bus"),                                             # truncated
    (b"\x00" * _control.SIZE, "not a shmbus bus"),                         # garbage
    (_control.MAGIC + bytes([_control.LAYOUT_VERSION + 1, 0, 0, 0])
     + bytes(_control.SIZE - 12), f"layout version {_control.LAYOUT_VERSION + 1}"),

])
def test_subscribers_refuse_a_bad_control_block(content, message):
    with shmbus.EventEmitter("ctl") as em:
        name = _names.control_name(helpers.token_of(em))
        _platform.unlink_segment(name)  # the emitter keeps its own mapping
        bad = _platform.create_segment(name, len(content))
        bad.view[:] = content
        bad.close()
        with pytest.raises(shmbus.IncompatibleBus, match=message):
            shmbus.subscribe("ctl")
    assert helpers.objects_of(helpers.token_of(em)) == []  # close removed the bad one too
