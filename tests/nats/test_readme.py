"""The README's remote.py, run as written against a real server and a real bridge."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.test_readme import write_programs

pytestmark = pytest.mark.timeout(120)

README_URL = "nats://127.0.0.1:4222"


def test_remote_py_prints_the_bus_to_its_end(bridged, tmp_path):
    bus = bridged("jobs")
    write_programs(tmp_path)
    program = (tmp_path / "remote.py").read_text()
    assert README_URL in program
    (tmp_path / "remote.py").write_text(program.replace(README_URL, bus.server.url))
    with subprocess.Popen([sys.executable, "remote.py"], cwd=tmp_path, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as remote:
        try:
            assert remote.stdout is not None
            assert remote.stdout.readline() == "subscribed\n"
            for step in range(3):
                bus.emitter.emit({"step": step})
            bus.finish()
            out, err = remote.communicate(timeout=60)
        finally:
            remote.kill()
    assert remote.returncode == 0, err
    assert out.splitlines() == ["{'step': 0}", "{'step': 1}", "{'step': 2}"]
