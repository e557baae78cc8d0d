"""``vaereg info``: version, configuration and where vaereg keeps its state, and whether SQLite finds the
index damaged (the diagnostic command: the only one that runs ``PRAGMA quick_check``, bounded in time)."""

from __future__ import annotations

import argparse

from vaereg import __version__
from vaereg.cli.common import Context, emit_json, fail_line
from vaereg.cli.exit import ExitStatus


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show version, config file, state directory, registries and index")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run)


def damaged_line(ctx: Context) -> str | None:
    """The damaged-index line every other command would end with, when SQLite finds the index damaged."""
    from vaereg.store.database import damage_of, unusable

    damage = damage_of(ctx.config.index)
    return str(unusable(ctx.config.index, damage)) if damage else None


def collect(ctx: Context, damaged: str | None = None) -> dict:
    """What `info` says; `damaged` (`damaged_line`) comes first among the warnings."""
    from vaereg.identity.kernel import kernel

    cfg = ctx.config
    registry = ctx.vaereg.registry
    return {
        "version": __version__,
        "config": str(cfg.config_file) if cfg.config_file else None,
        "home": str(cfg.home),
        "registries": [{"path": str(layer.path), "writable": layer.writable} for layer in registry.layers],
        "index": str(cfg.index),
        "plugins": [p.to_json() for p in ctx.plugins.describe()],
        # the compiled fp16 rounding's instruction set; None: not built, numpy rounds (same ids, slower)
        "fp16_kernel": kernel.isa() if kernel is not None else None,
        "warnings": [*([damaged] if damaged else []), *registry.warnings, *ctx.plugins.load_errors, *ctx.plugins.warnings],
    }


def run(args: argparse.Namespace, ctx: Context) -> int:
    damaged = damaged_line(ctx)
    info = collect(ctx, damaged)
    status = fail_line(damaged, ExitStatus.USAGE) if damaged else ExitStatus.OK
    if args.json:
        emit_json(info)
        return status
    print(f"vaereg {info['version']}")
    print(f"config      {info['config'] or '(none: defaults)'}")
    print(f"home        {info['home']}")
    print(f"index       {info['index']}")
    for reg in info["registries"]:
        print(f"registry    {reg['path']}{'  (writable)' if reg['writable'] else ''}")
    for plugin in info["plugins"]:
        print(f"plugin      {plugin['name']}")
    kernel = info["fp16_kernel"]
    print(f"fp16 kernel {kernel or 'not built (no C compiler at install): numpy rounds, same ids, slower'}")
    for warning in info["warnings"][1 if damaged else 0 :]:  # the damage was said on stderr
        print(f"warning     {warning}")
    return status
