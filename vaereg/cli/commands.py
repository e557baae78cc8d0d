"""The built-in subcommands, registered through ``vaereg_register_commands`` like a plugin's.

Each command lives in its own ``cmd_<name>`` module with ``add_parser(subparsers)`` and ``run(args, ctx)``;
``COMMANDS`` is the order ``vaereg --help`` lists them in.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from vaereg.hookspecs import hookimpl

COMMANDS = ("hash", "lookup", "ls", "scan", "check", "fix", "diff", "preview", "dedupe", "extract", "name", "alias",
            "unname", "daemon", "status", "install_extension", "plugins", "info")


def _adder(name: str) -> Callable[[Any], Any]:
    def add_parser(sub: Any) -> Any:
        return importlib.import_module(f"vaereg.cli.cmd_{name}").add_parser(sub)

    return add_parser


@hookimpl
def vaereg_register_commands(register: Callable[[str, Callable[[Any], Any]], None]) -> None:
    for name in COMMANDS:
        register(name.replace("_", "-"), _adder(name))
