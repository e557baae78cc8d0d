"""``vaereg hash PATH...``: the VAE identities and file hashes of files, folders and checkpoints.

A folder a format plugin reads as one model (a diffusers folder, a pipeline with ``vae/``) is one model. Any
other folder stands for every model file below it, as ``scan`` walks it (`files.walk`), a diffusers folder
among them again as one model; a problem met on the way (an unreadable subfolder, a broken link) is one line
on stderr and the rest goes on.

A file the index holds unchanged (same device, inode, size and mtime) is answered from the index without
being read; ``--rehash`` reads it anyway.

The table names a VAE the registry knows (by its id, or by the SHA-256 of a file it lists). A path that
cannot be read is said on stderr (``vaereg: PATH: reason``) and, with ``--json``, in its object's `error`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from vaereg.cli.common import (
    Context,
    add_rehash,
    emit_json,
    fail_line,
    file_problem,
    human_size,
    print_table,
    progress,
    short,
    shows_progress,
)
from vaereg.cli.exit import ExitStatus

if TYPE_CHECKING:
    from vaereg.identity.report import HashReport
    from vaereg.plugin.manager import Plugins
    from vaereg.store.registry.read import Registry


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hash",
        help="identify the VAE in model files, folders or checkpoints",
        description="Identify the VAE in each model file, diffusers folder or checkpoint given; a folder that is "
        "not one model stands for every model file below it (as scan finds them).",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="a model file, a diffusers folder, or a folder of them (searched below)")
    p.add_argument("--json", action="store_true", help="JSON Lines, one object per model (docs/json.md)")
    p.add_argument(
        "--no-file-hashes",
        dest="file_hashes",
        action="store_false",
        help="skip sha256/AutoV1-3/BLAKE3/CRC32 (they read the whole file)",
    )
    add_rehash(p)
    p.add_argument(
        "--autov3",
        action="store_true",
        help="compute AutoV3 whatever the file's size (a second SHA-256 pass; see [hash] autov3_max_mb)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from vaereg.store.answer import indexed_report

    reports = []
    from_index = not args.rehash and not (args.autov3 and args.file_hashes)
    targets, problems = _models(args.paths, ctx.plugins)
    for problem in problems:  # "PATH: reason": one line each
        fail_line(problem)
    failed = bool(problems)
    # one file is quick enough to need no bar; several may take minutes
    with progress(shows_progress(args.json) and len(targets) > 1, len(targets), what="hashing") as update:
        for n, path in enumerate(targets):
            if not isinstance(path, Path):  # a report already: a folder with no model file below it
                report: HashReport | None = path
            else:
                update(n, f"hashing {path.name}")
                report = (
                    indexed_report(ctx.config.index, path, with_file_hashes=args.file_hashes, plugins=ctx.plugins)
                    if from_index
                    else None
                )
            if report is None:
                from vaereg.identity.analyze import identify

                limit = None if args.autov3 else ctx.config.autov3_max_bytes
                report = identify(path, ctx.plugins, with_file_hashes=args.file_hashes, autov3_max_bytes=limit)
            if not report.ok:
                failed = True
                file_problem(report.path, report.error)
            if args.json:
                emit_json(report.to_json())
            else:
                reports.append(report)
    if not args.json:
        _print_table(reports, ctx.registry)
    return ExitStatus.FAILED if failed else ExitStatus.OK


def _models(paths: list[Path], plugins: Plugins) -> tuple[list[Path | HashReport], list[str]]:
    """What to identify, in order: each path given, but a folder that is not one model gives every model file
    below it (sorted; a diffusers folder's weights as the folder, once), or a report saying it holds none.
    Also the problems met walking ("<path>: <reason>")."""
    from vaereg.files.names import is_diffusers_weights
    from vaereg.files.walk import walk_models
    from vaereg.identity.report import HashReport

    targets: list[Path | HashReport] = []
    problems: list[str] = []
    for path in paths:
        if not path.is_dir() or _one_model(path, plugins):
            targets.append(path)  # a file, a missing path: identify says what it is
            continue
        walk = walk_models([path])
        problems += walk.warnings
        root, found, folders = walk.roots[0], [], {}
        for file in walk.files:
            below = path / os.path.relpath(file.path, root)  # shown the way the folder was given
            if is_diffusers_weights(below):
                folder = below.parent
                if folders.setdefault(folder, _one_model(folder, plugins)):
                    below = folder
            if below not in found:
                found.append(below)
        targets += found
        if not found and root not in walk.unreadable:
            targets.append(HashReport(path=str(path), format=None, error="no model file in this folder or below it"))
    return targets, problems


def _one_model(folder: Path, plugins: Plugins) -> bool:
    """Whether a format plugin reads `folder` as one model (a diffusers folder)."""
    from vaereg.identity.analyze import NotAModel, open_model

    try:
        with open_model(folder, plugins):
            return True
    except NotAModel:
        return False
    except Exception:  # noqa: BLE001 - claimed but unreadable: identifying it says why, as for a file
        return True


def registry_name(report: HashReport, registry: Registry) -> str | None:
    """The registry's name for the report's VAE: by its id, else by the file's SHA-256 (a listed file)."""
    entries = registry.find_by_id(report.vae.id) if report.vae else []
    if not entries and report.file and report.file.sha256:
        entries = registry.find_by_sha256(report.file.sha256)
    named = [entry for entry in entries if entry.name]
    return named[-1].name if named else None


def _print_table(reports: list[HashReport], registry: Registry) -> None:
    rows = []
    for r in reports:
        if not r.ok:
            continue
        v = r.vae
        rows.append((
            r.path,
            (registry_name(r, registry) or "unnamed") if v else "-",
            r.format or "-",
            f"{v.family} {v.dtype}" if v else (f"no VAE ({r.kind})" if r.kind else "no VAE"),
            short(v.id if v else None),
            short(v.encoder_id if v else None),
            short(v.decoder_id if v else None),
            r.file.autov2 if r.file and r.file.autov2 else "-",
            human_size(r.file.size) if r.file else "-",
        ))
    if rows:
        print_table(("path", "name", "format", "vae", "id", "encoder", "decoder", "autov2", "size"), rows)
