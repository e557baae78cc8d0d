"""``vaereg preview VAE... -o sheet.png``: decode one image with every VAE given and put them side by side.

VAE is a file (standalone VAE or a checkpoint holding one), an id or file hash (or a prefix), or a registry
name; ``--family F`` adds every indexed VAE of a family. The image (``--image``, else a built-in test chart)
is encoded once per distinct encoder and decoded by each VAE, one at a time. Needs the ``decode`` extra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vaereg.cli.common import Context, emit_json_lines, fail, fail_line, file_problem, os_problem
from vaereg.cli.exit import ExitStatus


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preview", help="decode one image with several VAEs and write a PNG sheet to compare them")
    p.add_argument("vaes", nargs="*", metavar="VAE", help="a file, an id or hash (prefix), or a registry name")
    p.add_argument("--family", metavar="F", help="also every indexed VAE of family F (e.g. kl-f8-4ch)")
    p.add_argument("--image", type=Path, metavar="FILE", help="the image to round-trip (default: a built-in test chart)")
    p.add_argument(
        "--size", type=int, default=256, metavar="PX", help="square side in pixels, a multiple of 8 from 64 to 1024 (default 256)"
    )
    p.add_argument(
        "-o", "--output", type=Path, required=True, metavar="SHEET.png",
        help="where to write the sheet, in the format its name ends in (.png, .jpg, .webp, .tiff, .bmp)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per VAE (figures, ids), then the sheet")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from vaereg.answers.network import DecodeUnavailable, require_extra

    try:
        require_extra()
    except DecodeUnavailable as exc:
        return fail(str(exc), ExitStatus.USAGE)
    from PIL import Image, UnidentifiedImageError

    from vaereg.answers.decode import (
        Failure,
        UnknownVae,
        check_size,
        prepare_image,
        round_trips,
        wanted_from,
    )
    from vaereg.answers.network import device
    from vaereg.answers.sheet import sheet_format, write_sheet

    if not args.vaes and not args.family:
        return fail("name at least one VAE (a file, id or name) or --family F", ExitStatus.USAGE)
    # What is wrong with the command line is said before the first VAE is read, not after every decode.
    if args.output.is_dir():
        return file_problem(args.output, "is a directory: name the sheet's file (e.g. DIR/sheet.png)", ExitStatus.USAGE)
    if not args.output.parent.is_dir():
        return file_problem(args.output.parent, "no such folder", ExitStatus.USAGE)
    try:
        sheet_format(args.output)
    except ValueError as exc:
        return file_problem(args.output, exc, ExitStatus.USAGE)
    try:
        check_size(args.size)
    except ValueError as exc:
        return fail(str(exc), ExitStatus.USAGE)
    catalog = None
    if ctx.config.index.is_file():
        from vaereg.store.catalog import Catalog

        catalog = Catalog(ctx.index, ctx.registry)
    try:
        wanted = wanted_from(args.vaes, args.family, catalog)
    except UnknownVae as exc:
        return fail(str(exc), ExitStatus.USAGE)
    source = None
    if args.image is not None:
        try:
            source = Image.open(args.image)
            source.load()
        except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
            return file_problem(args.image, f"not an image Pillow can read ({exc.__class__.__name__})")
        except OSError as exc:  # missing, a folder, unreadable, truncated: in the words used everywhere
            return fail_line(os_problem(exc, args.image))
    try:
        image = prepare_image(source, args.size)
    except ValueError as exc:
        return fail(str(exc), ExitStatus.USAGE)
    on = device()
    print(f"vaereg: {len(wanted)} VAE{'s' if len(wanted) != 1 else ''} at {args.size} px on {on}", file=sys.stderr)

    def progress(n: int, total: int, result) -> None:
        if isinstance(result, Failure):
            print(f"vaereg: {result.path}: {result.reason}", file=sys.stderr)
            return
        took = f"decoded in {result.decoder.seconds:.1f} s"
        if result.encoded:
            took = f"encoded in {result.encoder.seconds:.1f} s, {took}"
        else:
            took += " (same encoder: same latent)"
        print(f"[{n}/{total}] {result.label} ({result.identity.id[:12]}): {took}", file=sys.stderr)

    results = round_trips(wanted, image, ctx.plugins, on=on, progress=progress)
    trips = [r for r in results if not isinstance(r, Failure)]
    if args.json:
        emit_json_lines(r.to_json() for r in trips)
    if not trips:
        return fail("no VAE could be decoded: no sheet written")
    title = args.image.name if args.image is not None else "test chart"
    write_sheet(args.output, image, title, trips)
    print(f"vaereg: wrote {args.output}", file=sys.stderr)
    return ExitStatus.OK if len(trips) == len(results) else ExitStatus.FAILED
