"""`shmbus bench`: the benchmark suite of a source checkout, with a progress bar."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.cli.command import (
    REPO_ROOT,
    RUN_TIMEOUT,
    assert_one_error_line,
    assert_registry_empty,
    cli_env,
    run_cli,
)


@pytest.mark.timeout(60)
def test_bench_outside_a_source_checkout_says_it_needs_one(tmp_path: Path,
                                                          registry: Path) -> None:
    # An installed copy of the package: nothing next to it but itself.
    site = tmp_path / "site"
    shutil.copytree(REPO_ROOT / "shmbus", site / "shmbus",
                    ignore=shutil.ignore_patterns("__pycache__"))

    result = run_cli(registry, "bench", "--quick", cwd=site)

    assert_one_error_line(result, "shmbus bench needs a source checkout")
    assert str(site / "benchmarks" / "run.py") in result.stderr


BENCH_SMOKE = ["bench", "--quick", "--systems", "shmbus", "--workloads", "small",
               "--subscribers", "1", "--no-latency", "--no-growth"]


@pytest.mark.timeout(60)
def test_bench_runs_the_checkouts_suite_with_a_progress_bar(tmp_path: Path,
                                                            registry: Path) -> None:
    saved = tmp_path / "results.json"

    result = run_cli(registry, *BENCH_SMOKE, "--json", str(saved), cwd=REPO_ROOT)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "done" in result.stdout and "1/1" in result.stdout  # the bar, finished
    assert "Throughput, small" in result.stdout
    [throughput] = json.loads(saved.read_text())["throughput"]
    assert (throughput["system"], throughput["subscribers"]) == ("shmbus", 1)
    assert throughput["events_per_s"]["median"] > 0
    assert_registry_empty(registry)


@pytest.mark.timeout(60)
def test_bench_with_an_unknown_system_is_one_error_line(registry: Path) -> None:
    result = run_cli(registry, "bench", "--systems", "carrier-pigeon", cwd=REPO_ROOT)

    assert_one_error_line(result, "unknown system(s) ['carrier-pigeon']")


# -- finding the suite ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_bench_never_takes_the_directory_above_the_installed_package(
        tmp_path: Path, registry: Path) -> None:
    # The shmbus this runs is the checkout's (installed editable), and benchmarks/ is
    # right beside it; the command is run elsewhere, so it must not use it.
    assert (REPO_ROOT / "benchmarks" / "run.py").is_file()

    result = run_cli(registry, "bench", "--systems", "carrier-pigeon", cwd=tmp_path)

    assert_one_error_line(result, "shmbus bench needs a source checkout")
    assert f"no {tmp_path / 'benchmarks' / 'run.py'} beside" in result.stderr
    assert "--checkout PATH" in result.stderr


@pytest.mark.timeout(60)
def test_bench_finds_the_checkout_from_a_directory_inside_it(registry: Path) -> None:
    result = run_cli(registry, "bench", "--systems", "carrier-pigeon",
                     cwd=REPO_ROOT / "docs")

    # The suite itself answered: it was found, and ran.
    assert_one_error_line(result, "unknown system(s) ['carrier-pigeon']; choose from")


FAKE_SUITE = textwrap.dedent("""\
    # A stand-in for benchmarks/run.py that speaks its --progress-jsonl protocol.
    import json, os, sys, time

    if sys.argv[1:3] == ["--show", "-"]:
        results = json.load(sys.stdin)
        print(f"TABLES of a run by {results['python']} with {results['argv']}")
        sys.exit(0)
    mode = os.environ.get("FAKE_SUITE", "ok")
    def say(**message):
        print(json.dumps(message), flush=True)
    say(kind="plan", measurements=2)
    if mode == "hang":
        time.sleep(60)
    if mode == "crash":
        raise RuntimeError("the fake suite broke")
    print("a stray line that is not the protocol's", flush=True)
    say(kind="start", label="first")
    say(kind="start", label="second")
    failures = [{"measurement": "second", "error": "lost event 7"}] if mode == "failed" else []
    say(kind="results", results={"python": sys.executable, "argv": sys.argv[1:],
                                 "failures": failures})
    sys.exit(1 if failures else 0)
    """)


def make_checkout(root: Path, project_file: str = "setup.cfg",
                  naming: str = "[metadata]\nname = shmbus\n") -> Path:
    (root / "benchmarks").mkdir(parents=True)
    (root / "benchmarks" / "run.py").write_text(FAKE_SUITE)
    (root / project_file).write_text(naming)
    return root


def run_fake(registry: Path, *args: str, cwd: Path, mode: str = "ok"
             ) -> subprocess.CompletedProcess[str]:
    env = {**cli_env(registry), "FAKE_SUITE": mode}
    return subprocess.run([sys.executable, "-m", "shmbus", "bench", *args], cwd=cwd,
                          env=env, capture_output=True, encoding="utf-8",
                          timeout=RUN_TIMEOUT)


@pytest.mark.timeout(60)
def test_bench_checkout_runs_that_suite_with_this_python_and_shows_its_tables(
        tmp_path: Path, registry: Path) -> None:
    checkout = make_checkout(tmp_path / "checkout")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    saved = tmp_path / "results.json"

    result = run_fake(registry, "--checkout", str(checkout), "--quick", "--runs", "2",
                      "--json", str(saved), cwd=elsewhere)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "done" in result.stdout and "2/2" in result.stdout
    argv = ["--progress-jsonl", "--quick", "--runs", "2"]
    assert f"TABLES of a run by {sys.executable} with {argv}" in result.stdout
    assert json.loads(saved.read_text()) == {"python": sys.executable, "argv": argv,
                                             "failures": []}
    assert result.stderr == ""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("project_file, naming", [
    ("setup.cfg", "[metadata]\nname = shmbus\n"),
    ("pyproject.toml", '[project]\nname = "shmbus"\n'),
])
def test_bench_walks_up_to_a_checkout_named_in_either_project_file(
        tmp_path: Path, registry: Path, project_file: str, naming: str) -> None:
    checkout = make_checkout(tmp_path / "checkout", project_file, naming)
    below = checkout / "some" / "where"
    below.mkdir(parents=True)

    result = run_fake(registry, cwd=below)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "TABLES of a run by" in result.stdout


@pytest.mark.timeout(60)
def test_bench_skips_a_benchmarks_folder_of_another_project(tmp_path: Path,
                                                            registry: Path) -> None:
    other = make_checkout(tmp_path / "other", naming="[metadata]\nname = not-shmbus\n")

    walked = run_fake(registry, cwd=other)
    named = run_fake(registry, "--checkout", str(other), cwd=tmp_path)

    assert_one_error_line(walked, "shmbus bench needs a source checkout")
    assert_one_error_line(named, f"{other} is not a source checkout of shmbus")


@pytest.mark.timeout(60)
def test_bench_with_failed_measurements_shows_the_rest_then_one_error_line(
        tmp_path: Path, registry: Path) -> None:
    checkout = make_checkout(tmp_path / "checkout")

    result = run_fake(registry, cwd=checkout, mode="failed")

    assert_one_error_line(result, "1 of 2 measurements failed, so they have no figure; "
                          "first: second: lost event 7")
    assert "TABLES of a run by" in result.stdout


@pytest.mark.timeout(60)
def test_a_suite_that_dies_is_one_error_line_with_its_last_words(
        tmp_path: Path, registry: Path) -> None:
    checkout = make_checkout(tmp_path / "checkout")

    result = run_fake(registry, cwd=checkout, mode="crash")

    assert_one_error_line(result, f"the benchmark suite {checkout / 'benchmarks' / 'run.py'} "
                          "exited with status 1 before its results: RuntimeError: the fake "
                          "suite broke")


@pytest.mark.timeout(60)
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc to list processes")
def test_bench_ctrl_c_exits_130_and_leaves_no_suite_running(tmp_path: Path,
                                                             registry: Path) -> None:
    checkout = make_checkout(tmp_path / "checkout")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmbus", "bench"], cwd=checkout,
        env={**cli_env(registry), "FAKE_SUITE": "hang"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while len(_session_members(proc.pid)) < 2:  # the command and its suite
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.3)  # the suite is asleep in its first measurement
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode == 130, out + err
    assert err == ""
    assert _session_members(proc.pid) == []


def _session_members(session: int) -> list[str]:
    """Live (non-zombie) processes of a session."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            members.append(entry)
    return members


# -- the suite's side of it: benchmarks/run.py ------------------------------------------


def run_suite(registry: Path, *args: str, stdin: str | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "run.py"), *args],
                          input=stdin, env=cli_env(registry), capture_output=True,
                          encoding="utf-8", timeout=RUN_TIMEOUT)


@pytest.mark.timeout(60)
def test_the_suite_reports_progress_and_results_as_json_lines(registry: Path) -> None:
    result = run_suite(registry, "--progress-jsonl", *BENCH_SMOKE[1:])

    assert result.returncode == 0, result.stdout + result.stderr
    messages = [json.loads(line) for line in result.stdout.splitlines()]
    assert [m["kind"] for m in messages] == ["plan", "start", "results"]
    assert messages[0]["measurements"] == 1
    assert messages[1]["label"].startswith("throughput small x1")
    [throughput] = messages[2]["results"]["throughput"]
    assert throughput["system"] == "shmbus" and throughput["events_per_s"]["median"] > 0
    assert_registry_empty(registry)

    tables = run_suite(registry, "--show", "-", stdin=json.dumps(messages[2]["results"]))
    assert tables.returncode == 0, tables.stderr
    assert "Throughput, small" in tables.stdout


@pytest.mark.timeout(60)
def test_the_suite_says_what_is_wrong_with_its_options_as_json_too(registry: Path) -> None:
    for_a_program = run_suite(registry, "--progress-jsonl", "--systems", "carrier-pigeon")
    for_a_person = run_suite(registry, "--systems", "carrier-pigeon")

    assert for_a_program.returncode == for_a_person.returncode == 2
    [message] = [json.loads(line) for line in for_a_program.stdout.splitlines()]
    assert message["kind"] == "error"
    assert message["message"].startswith("unknown system(s) ['carrier-pigeon']; choose from")
    assert " ".join(for_a_person.stdout.split()) == message["message"]
