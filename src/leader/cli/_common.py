"""Pieces every command group shares: the config options, plain output lines, the command line.

Kept free of heavy imports (no torch): building the parser must stay fast (see
:mod:`leader.cli`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from leader.utils import name_value_pairs


def add_config(p: argparse.ArgumentParser, default: str | None = "paper") -> None:
    """``--config`` and ``--set`` (validated by :func:`leader.config.load_config` before the command runs)."""
    shown = default or "the command's own preset"
    p.add_argument("--config", default=default, metavar="PRESET|FILE",
                   help=f"preset (paper, demo, demo-quick) or YAML file (default: {shown}); "
                        "`leader config keys` lists every key")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set stage1.epochs=5 (repeatable; checked against the schema)")


def add_out(p: argparse.ArgumentParser, what: str, required: bool = True) -> None:
    p.add_argument("--out", required=required, metavar="PATH", help=what)


def say(prefix: str, msg: str) -> None:
    """One progress line on stderr: ``[leader PREFIX HH:MM:SS] msg``."""
    print(f"[leader {prefix} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def command_line() -> str:
    """The command as typed (``leader ...``), for reports; ``""`` when not run as ``leader``."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "leader":
        return shlex.join(["leader", *argv[1:]])
    return ""


def kv_pairs(items: list[str] | None, flag: str, form: str = "NAME=VALUE") -> dict[str, str]:
    """``["a=1", "b=2"]`` → ``{"a": "1", "b": "2"}`` (:func:`leader.utils.name_value_pairs`, last wins).

    Raises:
        ValueError: an item without ``=`` (names the flag and the expected form).
    """
    return name_value_pairs(items or [], flag, form, unique=False)
