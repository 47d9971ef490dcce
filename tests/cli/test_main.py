"""`main`: usage errors, bad values and unusable registries, each one line and a status."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import shmbus
from tests.cli.command import (
    NOBODY,
    REPO_ROOT,
    RUN_TIMEOUT,
    assert_no_traceback,
    assert_one_error_line,
    assert_registry_empty,
    cli_env,
    run_cli,
)
from tests.nats_server import NatsServer, free_port


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["demo", "--bogus"],
    ["demo", "--subscribers", "many"],
    ["gc", "--events", "3"],
    ["ls", "--bogus"],
    ["tail"],
    ["tail", "news", "-n", "many"],
    ["top", "--once", "--iterations", "2"],
    ["top", "--interval", "soon"],
    ["bench", "--runs", "three"],
    ["bridge", "news"],
])
def test_usage_errors_exit_nonzero_without_traceback(registry: Path, args: list[str]) -> None:
    result = run_cli(registry, *args)

    assert result.returncode != 0
    assert "usage:" in result.stderr
    assert_no_traceback(result)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, message", [
    (["demo", "--subscribers", "0"], "--subscribers must be between"),
    (["demo", "--events", "-5"], "--events must be 0 or more"),
    (["demo", "--slow-ms", "-1"], "--slow-ms must be"),
    (["demo", "--capacity", "0"], "capacity must be between"),
    (["tail", "news", "-n", "0"], "--count must be 1 or more"),
    (["tail", "../news"], "invalid bus name '../news'"),
    (["top", "--interval", "0"], "--interval must be a number of seconds above 0"),
    (["top", "--iterations", "0"], "--iterations must be 1 or more"),
    (["bench", "--runs", "0"], "--runs must be 1 or more"),
])
def test_bad_values_print_one_error_line_and_exit_1(registry: Path, args: list[str],
                                                     message: str) -> None:
    result = run_cli(registry, *args)

    assert_one_error_line(result, message)
    assert_registry_empty(registry)


# -- a registry you may not use ---------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", [["ls"], ["tail", "news"], ["top", "--once"], ["gc"]])
def test_a_registry_of_another_user_is_refused_in_one_line(tmp_path: Path,
                                                           command: list[str]) -> None:
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, NOBODY, NOBODY)
        owner = NOBODY
    else:
        theirs, owner = Path("/"), 0  # root's, and not ours

    result = run_cli(theirs, *command)

    assert_one_error_line(result, f"registry directory {theirs} belongs to uid {owner}")
    assert "SHMBUS_DIR" in result.stderr


def _as_nobody(argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


@pytest.mark.timeout(60)
def test_a_registry_you_cannot_create_is_a_permission_error_in_one_line(
        tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    registry = locked / "registry"
    argv = [sys.executable, "-m", "shmbus", "ls"]
    if os.geteuid() == 0:
        # Root may write anywhere; nobody may not even enter the test's private tmp_path.
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot run as another user")
        probe = subprocess.run(_as_nobody([sys.executable, "-c", "import shmbus"]),
                               cwd="/", capture_output=True, text=True, timeout=RUN_TIMEOUT)
        if probe.returncode != 0:
            pytest.skip(f"user nobody cannot import shmbus here: {probe.stderr[-300:]}")
        argv = _as_nobody(argv)
    else:
        locked.chmod(0o500)
    try:
        result = subprocess.run(argv, cwd="/", env=cli_env(registry), capture_output=True,
                                encoding="utf-8", timeout=RUN_TIMEOUT)
    finally:
        locked.chmod(0o700)

    assert_one_error_line(result, "Permission denied")
    assert f"{registry}" in result.stderr and "SHMBUS_DIR" in result.stderr
    assert not registry.exists()


# -- one wording per situation: the command prints what the API raises ------------------
#
# Each test runs the command as a user would and compares its one error line with the
# message of the exception the library raises for the same situation, here and now.


def api_message(call: Callable[[], object]) -> str:
    with pytest.raises(shmbus.ShmBusError) as raised:
        call()
    return str(raised.value)


def assert_says(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr == f"shmbus: error: {message}\n"


def _bridge(name: str, url: str) -> Callable[[], object]:
    from shmbus.nats import Bridge

    return lambda: Bridge(name, url).run()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command, call", [
    (["ls", "nope"], lambda: shmbus.stats("nope")),
    (["tail", "nope"], lambda: shmbus.subscribe("nope")),
])
def test_no_such_bus_is_the_librarys_message(registry: Path, command: list[str],
                                             call: Callable[[], object]) -> None:
    assert_says(run_cli(registry, *command), api_message(call))


@pytest.mark.timeout(60)
def test_bridging_no_such_bus_is_the_librarys_message(registry: Path,
                                                      nats_server: NatsServer) -> None:
    result = run_cli(registry, "bridge", "nope", "--nats", nats_server.url)

    assert_says(result, api_message(_bridge("nope", nats_server.url)))
    assert "`shmbus ls` lists the buses there" in result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command, call", [
    (["ls"], shmbus.buses),
    (["tail", "news"], lambda: shmbus.subscribe("news")),
    (["top", "--once"], shmbus.buses),
    (["gc"], shmbus.cleanup),
])
def test_a_registry_not_yours_is_the_librarys_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str],
        call: Callable[[], object]) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)

    result = run_cli(theirs, *command)
    monkeypatch.setenv("SHMBUS_DIR", str(theirs))

    assert_says(result, api_message(call))


@pytest.mark.timeout(60)
def test_no_nats_server_is_the_librarys_message(registry: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    with shmbus.EventEmitter("news"):
        tail = run_cli(registry, "tail", f"{url}/news")
        bridge = run_cli(registry, "bridge", "news", "--nats", url)
        bridge_api = api_message(_bridge("news", url))

    assert_says(tail, api_message(lambda: shmbus.subscribe(f"{url}/news")))
    assert_says(bridge, bridge_api)
    assert f"no NATS server answers at {url}" in bridge.stderr


@pytest.mark.timeout(60)
def test_nats_py_missing_is_the_librarys_message(tmp_path: Path, registry: Path) -> None:
    # Ahead of the real one on the path, a `nats` that fails as a missing one does.
    hidden = tmp_path / "hidden"
    (hidden / "nats").mkdir(parents=True)
    (hidden / "nats" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'nats'\", name='nats')\n")
    env = {**cli_env(registry), "PYTHONPATH": str(hidden)}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *argv], env=env, capture_output=True,
                              encoding="utf-8", timeout=RUN_TIMEOUT)

    api = run("-c", "import shmbus\n"
                    "try:\n"
                    "    shmbus.subscribe('nats://127.0.0.1:4222/news')\n"
                    "except shmbus.NatsError as exc:\n"
                    "    print(exc)\n")
    assert api.returncode == 0 and "pip install 'shmbus[nats]'" in api.stdout, api

    with shmbus.EventEmitter("news"):
        assert_says(run("-m", "shmbus", "bridge", "news", "--nats", "nats://127.0.0.1:4222"),
                    api.stdout.strip())
        assert_says(run("-m", "shmbus", "tail", "nats://127.0.0.1:4222/news"),
                    api.stdout.strip())


# -- the package: how the command is reached, and what it may import --------------------

CLI_DIR = REPO_ROOT / "shmbus" / "cli"
PRIVATE_CORE_ALLOWED = {("_common.py", "shmbus._registry")}
"""The registry's default location has no public name; `_common` alone reads it."""


def _imported_modules(path: Path) -> set[str]:
    """The absolute names of the modules `path` imports (relative ones resolved)."""
    package = "shmbus.cli" if path.parent == CLI_DIR else "shmbus"
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_the_command_imports_the_public_api_and_the_core_never_the_command() -> None:
    private = {(path.name, name) for path in CLI_DIR.glob("*.py")
               for name in _imported_modules(path)
               if name.startswith("shmbus._") and name.count(".") == 1}
    assert private == PRIVATE_CORE_ALLOWED
    core = [path.name for path in (REPO_ROOT / "shmbus").glob("*.py")
            if any(n.startswith("shmbus.cli") for n in _imported_modules(path))]
    assert core == ["__main__.py"]


@pytest.mark.timeout(60)
def test_importing_shmbus_loads_nothing_of_the_command() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, shmbus\n"
         "print(sorted(m for m in sys.modules if m.startswith('shmbus.cli')))"],
        capture_output=True, encoding="utf-8", timeout=RUN_TIMEOUT, check=True)
    assert probe.stdout.strip() == "[]"


def test_main_is_all_the_package_exports_and_the_script_runs_it() -> None:
    import shmbus.cli

    assert shmbus.cli.__all__ == ["main"]
    [script] = importlib.metadata.entry_points(group="console_scripts", name="shmbus")
    assert script.value == "shmbus.cli:main"
    assert script.load() is shmbus.cli.main


@pytest.mark.timeout(60)
@pytest.mark.parametrize("argv", [
    [str(Path(sys.executable).parent / "shmbus")],
    [sys.executable, "-m", "shmbus"],
])
def test_the_script_and_python_m_shmbus_are_the_same_command(registry: Path,
                                                            argv: list[str]) -> None:
    result = subprocess.run([*argv, "--version"], env=cli_env(registry),
                            capture_output=True, encoding="utf-8", timeout=RUN_TIMEOUT)

    assert (result.returncode, result.stdout) == (
        0, f"shmbus {shmbus.__version__} (core: {shmbus.CORE})\n")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("core", [
    pytest.param("c", marks=pytest.mark.skipif(
        importlib.util.find_spec("shmbus._ringcore") is None,
        reason="shmbus._ringcore was not built")),
    "python",
])
def test_the_version_and_ls_say_which_core_runs(registry: Path, core: str) -> None:
    env = {**cli_env(registry), "SHMBUS_CORE": core}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shmbus", *args], env=env,
                              capture_output=True, encoding="utf-8", timeout=RUN_TIMEOUT)

    assert run("--version").stdout == f"shmbus {shmbus.__version__} (core: {core})\n"
    assert run("ls").stdout.strip() == f"no buses (registry {registry}; core: {core})"
    assert json.loads(run("ls", "--json").stdout)["core"] == core
