"""``leader config show|keys``: the resolved configuration and every key with its help."""

from __future__ import annotations

import argparse

import yaml

from leader.cli._common import add_config
from leader.config import config_keys


def _cmd_show(a) -> int:
    print(yaml.safe_dump(a.cfg.to_dict(), sort_keys=False, allow_unicode=True), end="")
    return 0


def _cmd_keys(a) -> int:
    rows = config_keys()
    if a.grep:
        rows = [r for r in rows if a.grep.lower() in (r[0] + " " + r[3]).lower()]
    width = max(len(r[0]) for r in rows) if rows else 10
    for key, tp, default, help_ in rows:
        print(f"{key:<{width}}  {tp}  (default: {default!r})")
        print(f"{'':<{width}}  {help_}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``leader config show`` and ``leader config keys``."""
    c = sub.add_parser("config", help="show the resolved configuration, or list every key with its help")
    cs = c.add_subparsers(dest="config_cmd", required=True, metavar="SUBCOMMAND")
    s = cs.add_parser("show", help="print the config a command would run with (after --config and --set), as YAML")
    add_config(s)
    s.set_defaults(func=_cmd_show)
    k = cs.add_parser("keys", help="list every config key with its type, default and one line of help")
    k.add_argument("--grep", default=None, metavar="TEXT", help="only keys whose name or help contains TEXT")
    k.set_defaults(func=_cmd_keys)
