"""``vaereg info``: version, configuration and where vaereg keeps its state, and whether SQLite finds the
index damaged (the diagnostic command: the only one that runs ``PRAGMA quick_check``, bounded in time)."""

from __future__ import annotations

import argparse

from vaereg import __version__
from vaereg.cli.common import Context, emit_json, fail
from vaereg.cli.exit import ExitStatus


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show version, config file, state directory, registries and index")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run)


def collect(ctx: Context) -> dict:
    from vaereg.identity.kernel import kernel
    from vaereg.store.database import damage_of, unusable

    cfg = ctx.config
    registry = ctx.vaereg.registry
    damage = damage_of(cfg.index)
    # the damaged-index line every other command would end with (`run` also says it on stderr, exit status 2)
    damaged = [str(unusable(cfg.index, damage))] if damage else []
    return {
        "version": __version__,
        "config": str(cfg.config_file) if cfg.config_file else None,
        "home": str(cfg.home),
        "registries": [{"path": str(layer.path), "writable": layer.writable} for layer in registry.layers],
        "index": str(cfg.index),
        "plugins": [p.to_json() for p in ctx.plugins.describe()],
        # the compiled fp16 rounding's instruction set; None: not built, numpy rounds (same ids, slower)
        "fp16_kernel": kernel.isa() if kernel is not None else None,
        "warnings": [*damaged, *registry.warnings, *ctx.plugins.load_errors, *ctx.plugins.warnings],
    }


def run(args: argparse.Namespace, ctx: Context) -> int:
    info = collect(ctx)
    damaged = [w for w in info["warnings"] if w.startswith(f"{info['index']}: ")]
    status = fail(damaged[0], ExitStatus.USAGE) if damaged else ExitStatus.OK
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
    for warning in info["warnings"][len(damaged):]:  # the damage was said on stderr
        print(f"warning     {warning}")
    return status
