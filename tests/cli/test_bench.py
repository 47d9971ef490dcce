"""`shmbus bench`: the benchmark suite of a source checkout, with a progress bar."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.cli.command import REPO_ROOT, assert_one_error_line, assert_registry_empty, run_cli


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
