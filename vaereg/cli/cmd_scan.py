"""``vaereg scan [DIR...]``: bring the index up to date with folders of model files.

Unchanged files cost a stat; renamed and moved ones are recognised without a read; deleted ones leave the
index. The identities of all new and changed files come first, then the whole-file hashes of every file
below the folders that has none yet (so ``scan --no-file-hashes`` now and ``scan`` later fills them in).
With no DIR, the launcher installations of ``[daemon] launchers`` and those found in the usual places
are scanned (their VAE and checkpoint folders); ``--launcher PATH`` names one. With ``--json`` one object is
printed (docs/daemon.md, "vaereg scan --json")::

    {"roots": [str], "launchers": [{"launcher", "root", "vae", "checkpoints"}], "new": int, "changed": int,
     "moved": int, "removed": int, "unchanged": int, "failed": int, "hashed": int, "errors": ["<path>: <reason>"],
     "not_read": ["<path>: not read: <why>"], "still_unreadable": ["<path>: <reason>"], "no_vae": int,
     "no_vae_kinds": {kind: int}, "warnings": [str], "bytes_read": int, "seconds": float}

A scan that completes exits 0, listing the files it could not read, each also said on stderr
(``vaereg: PATH: reason``); with ``--strict`` those make it exit 1, and so do the files an earlier scan could
not read that are unchanged since (each said again). A file the OS would not let a scan read (``PATH: access
failed: permission denied``) is read again by every scan. Ctrl-C exits 130 and says how far the scan got, in
new files identified or, in the second phase, files hashed (what was indexed stays indexed).
``--rebuild-index`` moves an index this vaereg cannot use aside and builds a new one.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vaereg.cli.common import (
    Context,
    console,
    emit_json,
    fail,
    fail_line,
    file_problem,
    human_size,
    note,
    progress,
    shows_progress,
    warn,
    working,
)
from vaereg.cli.exit import ExitStatus


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scan", help="index every model file below folders; unchanged files are only stat'ed")
    p.add_argument(
        "roots", nargs="*", type=Path, metavar="DIR", help="folders or files (default: the launchers found)"
    )
    p.add_argument(
        "--launcher",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="a launcher installation (A1111/Forge, ComfyUI, ...) whose VAE and checkpoint folders to scan",
    )
    p.add_argument(
        "--strict", action="store_true", help="exit 1 when a file below the folders cannot be read (now or before)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object when done (no progress bar)")
    p.add_argument(
        "--no-file-hashes",
        dest="file_hashes",
        action="store_false",
        help="identities only: skip sha256/AutoV1-3/BLAKE3/CRC32 (they read every file whole); a later scan "
        "without it fills them in",
    )
    p.add_argument(
        "--rebuild-index",
        action="store_true",
        help="move the index aside (to index.sqlite3.broken-N) and build a new one; names are kept",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from vaereg.store.scan import plan_scan

    for root in args.roots:
        if not os.path.exists(root):
            return file_problem(root, "no such file or directory", ExitStatus.USAGE)
    launchers, status = _launchers(args, ctx)
    if status is not None:
        return status
    if not args.roots and not launchers:
        _print_none_found(args, ctx)
        return ExitStatus.OK
    from vaereg.files.launchers import model_folders

    args.roots = [*args.roots, *model_folders(launchers)]
    if not args.json:
        for found in launchers:
            print(f"{found.launcher} at {found.root}", file=sys.stderr)
    config = ctx.config
    if args.rebuild_index:
        status = _move_index_aside(ctx)
        if status:
            return status
    ctx.registry  # noqa: B018 - its warnings first
    with_file_hashes = args.file_hashes and config.file_hashes
    show_progress = shows_progress(args.json)
    index, ingest = ctx.index, ctx.vaereg.ingester()
    try:
        with working(show_progress, "looking at the folders..."):
            plan = plan_scan(args.roots, index, exclude=[config.home, config.index.parent])
    except KeyboardInterrupt:
        return fail("interrupted while looking at the folders; nothing was changed", ExitStatus.INTERRUPTED)
    where = {"phase": "identify", "done": 0, "total": len(plan.to_identify)}
    try:
        with progress(show_progress, plan.bytes_to_read, what="identifying", in_bytes=True) as update:

            def on_progress(p) -> None:
                where.update(phase=p.phase, done=p.files_done, total=p.files_total)
                name = os.path.basename(p.path) if p.path else "done"
                if p.phase == "identify":
                    update(p.bytes_done, f"{p.files_done}/{p.files_total} {name}")
                else:  # the whole-file hashes, after every identity
                    update(plan.bytes_to_read, f"hashing {p.files_done}/{p.files_total} {name}")

            report = plan.execute(ingest, with_file_hashes=with_file_hashes, on_progress=on_progress)
    except KeyboardInterrupt:
        return fail(_interrupted(where), ExitStatus.INTERRUPTED)
    for message in report.warnings:
        warn(message)
    for message in report.not_read:  # "PATH: not read: what it is": a note, not a failure
        note(message)
    for line in report.errors:  # "PATH: reason": one line each, a newline in PATH escaped
        fail_line(line)
    if args.strict:  # unchanged since a scan could not read them: still broken, and --strict says so
        for line in report.still_unreadable:
            fail_line(line)
    if args.json:
        emit_json({**report.to_json(), "launchers": [_launcher_json(found) for found in launchers]})
    else:
        _print_summary(report, with_file_hashes)
    return ExitStatus.FAILED if (report.errors or report.still_unreadable) and args.strict else ExitStatus.OK


def _interrupted(where: dict) -> str:
    """What was done when Ctrl-C came, in the phase it came in (`ScanProgress.phase`)."""
    done, total = where["done"], where["total"]
    if where["phase"] == "hash":
        return (
            f"interrupted while hashing: {done} of {total} files hashed; every identity is indexed;"
            " run scan again to go on"
        )
    return f"interrupted: {done} of {total} new or changed files read and indexed; run scan again to go on"


def _launchers(args: argparse.Namespace, ctx: Context) -> tuple[list, int | None]:
    """The launchers to scan: those named by --launcher (each must be one), else with no DIR the configured
    ones and those in the usual places."""
    from vaereg.files.launchers import find_launchers, locate

    found = []
    for root in args.launcher:
        if not os.path.isdir(root):
            return [], file_problem(root, "no such folder", ExitStatus.USAGE)
        folders = locate(ctx.plugins, root)
        if folders is None:
            return [], file_problem(root, f"not an installation of a launcher vaereg knows ({KNOWN})", ExitStatus.USAGE)
        found.append(folders)
    if found or args.roots:
        return found, None
    return list(find_launchers(ctx.plugins, ctx.config.launchers).found), None


#: The launchers the built-in plugin recognises, for messages.
KNOWN = "A1111, Forge, reForge, SD.Next, ComfyUI, InvokeAI, Fooocus, Stability Matrix"


def _launcher_json(found) -> dict:
    return {
        "launcher": found.launcher,
        "root": str(found.root),
        "vae": [str(p) for p in found.vae],
        "checkpoints": [str(p) for p in found.checkpoints],
    }


def _print_none_found(args: argparse.Namespace, ctx: Context) -> None:
    from vaereg.files.launchers import usual_places

    if args.json:
        emit_json({"roots": [], "launchers": [], "searched": [str(p) for p in usual_places()]})
        return
    print(
        f"no launcher installation found ({KNOWN}) in the usual places: your home folder and its Documents,"
        " Desktop and Downloads folders, one level down, and the apps' data folders.\n"
        "Name your models folder: vaereg scan ~/stable-diffusion-webui/models\n"
        "or an installation: vaereg scan --launcher ~/ComfyUI (or list it under [daemon] launchers in the"
        " config, see vaereg.toml)"
    )


def _move_index_aside(ctx: Context) -> int:
    """Move the index aside (a daemon must not be writing it); 0 when done or there was none."""
    from vaereg.store.database import move_aside
    from vaereg.watch.state import read_status

    config = ctx.config
    if read_status(config.home).running:
        return file_problem(config.index, "a vaereg daemon is using the index: stop it first", ExitStatus.USAGE)
    aside = move_aside(config.index)
    if aside is not None:
        print(f"vaereg: moved the index aside to {aside}; building a new one", file=sys.stderr)
    return 0


#: How the summary names each kind of model file with no VAE, one and several.
_KIND_WORDS = {
    "lora": ("LoRA", "LoRAs"),
    "embedding": ("embedding", "embeddings"),
    "controlnet": ("ControlNet", "ControlNets"),
    "upscaler": ("upscaler", "upscalers"),
    "text-encoder": ("text encoder", "text encoders"),
    "diffusion-model": ("diffusion model alone", "diffusion models alone"),
    "other": ("other", "others"),
}


def _print_summary(report, with_file_hashes: bool) -> None:
    out = console()
    counts = ", ".join(
        f"{n} {label}"
        for n, label in (
            (report.new, "new"),
            (report.changed, "changed"),
            (report.failed, "failed"),
            (report.moved, "moved"),
            (report.removed, "removed"),
            (report.unchanged, "unchanged"),
            (report.hashed, "hashed"),
        )
        if n or label in ("new", "unchanged")
    )
    if report.bytes_read and with_file_hashes:
        out.print(f"{counts} ({human_size(report.bytes_read)} read in {report.seconds:.1f} s)", markup=False)
    elif report.bytes_read:
        out.print(f"{counts} ({human_size(report.bytes_read)} of files identified in {report.seconds:.1f} s)",
                  markup=False)
    else:
        out.print(f"{counts} (in {report.seconds:.1f} s)", markup=False)
    if report.no_vae:
        what = "model file holds" if report.no_vae == 1 else "model files hold"
        kinds = ", ".join(f"{n} {_KIND_WORDS.get(kind, kind)[n != 1]}" for kind, n in report.no_vae_kinds.items())
        out.print(f"{report.no_vae} {what} no VAE: {kinds}", markup=False)
    if report.errors:  # each said on stderr above
        n = len(report.errors)
        out.print(f"{n} {'file' if n == 1 else 'files'} could not be read; `vaereg ls --problems` lists them until fixed",
                  markup=False)
    if report.still_unreadable:
        n = len(report.still_unreadable)
        out.print(f"{n} unchanged {'file' if n == 1 else 'files'} still unreadable, as an earlier scan found;"
                  " `vaereg ls --problems` lists them", markup=False)
