"""The README's programs, run as written: a newcomer copies them, so they must work.

Every Python block of the README that starts with `# <file>.py` is a whole program; this
file runs each one in a directory of its own and compares what it prints with what the
README says it prints. A block without such a first line is not allowed, and nor is a
named block this file does not run.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.DOTALL)
NAMED = re.compile(r"# ([\w.]+\.py)\b")

pytestmark = pytest.mark.timeout(120)

QUICKSTART = ["{'step': 0}", "{'step': 1}", "{'step': 2}"]

PRINTS = {
    "batches.py": ["1 [0, 1, 2] 100"],
    "with_asyncio.py": QUICKSTART,
    "stats.py": ["10 1", "256 10 0 0.0"],
    "pool.py": ["[0, 1, 4, 9, 16, 25, 36, 49]"],
    "shapes.py": ["1 2 3", "1", "[2, 3, 4]", "[3, 4, 5]"],
}
"""What each self-contained program prints, line by line (sorted, for `UNORDERED`)."""

UNORDERED: set[str] = set()
"""Programs whose lines come from several processes, in any order."""

RUN_ELSEWHERE = {"emitter.py", "subscriber.py", "remote.py", "test_workers.py"}
"""Programs that run with others (the quickstart's), under pytest, or in tests/nats."""


def _blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README.read_text()) if lang == language]


def _programs() -> dict[str, str]:
    programs = {}
    for body in _blocks("python"):
        named = NAMED.match(body)
        assert named, f"a README Python block is not a whole program:\n{body[:200]}"
        programs[named.group(1)] = body
    return programs


def run(command: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
               + os.environ["PATH"])  # `python` is this interpreter, as in an active venv
    return subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=100)


def write_programs(into: pathlib.Path) -> None:
    for name, body in _programs().items():
        (into / name).write_text(body)


def test_every_program_in_the_readme_is_run_here():
    assert set(_programs()) == set(PRINTS) | RUN_ELSEWHERE


@pytest.mark.parametrize("name", sorted(PRINTS))
def test_a_program_prints_what_the_readme_says(name, tmp_path):
    write_programs(tmp_path)
    done = run(f"python {name}", tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert (sorted(lines) if name in UNORDERED else lines) == PRINTS[name]


def _quickstart_line() -> str:
    lines = [line for block in _blocks("sh") for line in block.splitlines()
             if "emitter.py" in line]
    assert len(lines) == 1, lines
    return lines[0]


def _numbered_outputs(line: str) -> str:
    """`line` with each subscriber's output sent to a file of its own (out.1, out.2...)."""
    count = iter(range(1, 100))
    return re.sub(r"python subscriber\.py", lambda _: f"python subscriber.py > out.{next(count)}",
                  line)


@pytest.mark.parametrize("order", ["as written", "emitter first"])
def test_the_quickstart_works_whatever_starts_first(order, tmp_path):
    write_programs(tmp_path)
    line = _quickstart_line()
    if order == "emitter first":
        line = "python emitter.py & sleep 1; python subscriber.py & python subscriber.py; wait"
    done = run(_numbered_outputs(line), tmp_path)
    outputs = [path.read_text().splitlines() for path in sorted(tmp_path.glob("out.*"))]
    assert outputs == [QUICKSTART, QUICKSTART], done.stderr
    assert done.stderr == ""


def test_the_pytest_example_passes_with_the_installed_plugin(tmp_path):
    write_programs(tmp_path)
    done = run("python -m pytest -q -p no:cacheprovider test_workers.py", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
