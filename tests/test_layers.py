"""The layer contracts in setup.cfg (checked by lint-imports) cover every module."""

from __future__ import annotations

import configparser
import pathlib

import shmbus

PACKAGE = pathlib.Path(shmbus.__file__).parent
SETUP_CFG = PACKAGE.parent / "setup.cfg"


def _listed(contract: str, option: str) -> set[str]:
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    return set(config[f"importlinter:contract:{contract}"][option].split())


def _core_modules() -> set[str]:
    return {f"shmbus.{path.stem}" for path in PACKAGE.glob("_*.py")} - {"shmbus.__init__",
                                                                        "shmbus.__main__"}


def test_every_core_module_is_held_to_the_core_contract():
    # A module added to the core without a line in the contract would escape the check.
    assert _listed("core", "source_modules") == _core_modules()


def test_the_command_line_may_reach_no_private_module_but_the_registry():
    assert _listed("cli", "forbidden_modules") == _core_modules() - {"shmbus._errors",
                                                                     "shmbus._registry"}
