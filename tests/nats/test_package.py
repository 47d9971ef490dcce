"""The NATS layer as a package: what it exports, what it imports, and life without it.

`shmbus` must import, and `from shmbus import *` work, without nats-py (the `nats`
extra); `import shmbus.nats` must then say how to get it. The core never imports the
layer (only `_facade`, lazily, for a `nats://` name), and the layer never imports the
command line. Its modules read no other class's private attributes.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import shmbus
import shmbus.nats

PACKAGE = Path(shmbus.__file__).parent
LAYER = PACKAGE / "nats"
HIDE_NATS = "import sys; sys.modules['nats'] = None  # as if nats-py were not installed\n"


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", HIDE_NATS + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60)


def test_star_import_works_without_nats_py() -> None:
    done = run_python("""
        from shmbus import *
        assert subscribe and EventEmitter and Subscription and NatsError
        import shmbus
        assert "shmbus.nats" not in sys.modules
        print(len(shmbus.__all__))
    """)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(shmbus.__all__)


def test_the_nats_layer_without_nats_py_says_how_to_get_it() -> None:
    done = run_python("""
        import shmbus
        for attempt in ("import shmbus.nats",
                        "shmbus.subscribe('nats://127.0.0.1:4222/jobs')"):
            try:
                exec(attempt)
            except ImportError as exc:  # what code that guards an optional import catches
                assert isinstance(exc, shmbus.NatsError), type(exc)
                assert exc.name == "nats"
                print(exc)
            else:
                raise AssertionError(attempt + " worked without nats-py")
    """)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert all("pip install 'shmbus[nats]'" in line for line in lines)


def test_the_nats_names_live_in_shmbus_nats_alone() -> None:
    # The local core never imports the NATS layer: only subscribe() does, for nats://.
    for name in ("Bridge", "run_bridge", "RemoteSubscription"):
        assert name not in shmbus.__all__
        assert not hasattr(shmbus, name)
    assert set(shmbus.nats.__all__) >= {"Bridge", "run_bridge", "RemoteSubscription",
                                        "subscribe_remote"}
    for name in shmbus.nats.__all__:
        assert hasattr(shmbus.nats, name)


def imports_of(path: Path, top_level_only: bool = False) -> set[str]:
    """Every module `path` imports, absolute (`shmbus.nats._wire`, `nats.js`)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def test_the_core_never_imports_the_layer_and_the_layer_never_the_cli() -> None:
    lazily = {"__init__.py", "_facade.py"}  # inside functions: for old names, nats:// names
    for path in PACKAGE.glob("_*.py"):
        if path.name == "_bridge.py" or path.name.startswith("_cli"):
            continue  # the CLI's, and its old import path (a re-export of the layer)
        imported = imports_of(path, top_level_only=path.name in lazily)
        assert not {m for m in imported if m.split(".")[0] == "nats"
                    or m.startswith("shmbus.nats")}, path.name
    for path in LAYER.glob("*.py"):
        imported = imports_of(path)
        assert not {m for m in imported if m.startswith(("shmbus._cli", "shmbus.cli"))}, path


def test_no_module_of_the_layer_reads_another_class_s_private_attributes() -> None:
    for path in LAYER.glob("*.py"):
        tree = ast.parse(path.read_text())
        own_classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                owner = node.value
                ok = {"self", "cls"} | own_classes  # `Cls._make` beside `Cls` is its own
                assert isinstance(owner, ast.Name) and owner.id in ok, (
                    f"{path.name}:{node.lineno}: .{node.attr} of {ast.unparse(owner)}")


def test_each_module_is_small_and_says_what_it_is() -> None:
    for path in LAYER.glob("*.py"):
        source = path.read_text()
        assert len(source.splitlines()) <= 400, path.name
        assert ast.get_docstring(ast.parse(source)), path.name
