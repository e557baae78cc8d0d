"""``vaereg lookup QUERY``: what is known about a VAE - the registry entry and every copy on this machine.

QUERY is any id or file hash vaereg computes (id, exact_id, encoder_id, decoder_id, sha256, AutoV1-3,
BLAKE3), in any case, or at least 6 leading hex digits of one; or a registry entry's name, alias or slug.
Exit status 1 when nothing matches or the query is ambiguous (the candidates are listed); ``--json``
prints one object (docs/json.md).
"""

from __future__ import annotations

import argparse

from vaereg.cli.common import Context, emit_json, fail, fail_line, human_size, print_table, say, short
from vaereg.cli.exit import ExitStatus
from vaereg.errors import printable


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lookup", help="show the registry entry and every indexed copy of a VAE, by any hash or name")
    p.add_argument(
        "query",
        metavar="QUERY",
        help="an id, exact_id, encoder_id, decoder_id, sha256, AutoV1/V2/V3 or BLAKE3, or >= 6 leading hex digits;"
        " or a name, alias or registry slug",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (docs/json.md)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    try:
        result = ctx.catalog().lookup(args.query)
    except ValueError as exc:
        return fail(str(exc), ExitStatus.USAGE)
    if args.json:
        emit_json(result.to_json())
    elif result.ambiguous:
        _print_candidates(result)
    else:
        for n, match in enumerate(result.matches):
            if n:
                print()
            _print_match(match)
    if not result.matches:
        return fail_line(f"nothing matches {args.query}")
    if result.ambiguous:
        values = len({(hit.kind, hit.value) for match in result.matches for hit in match.matched})
        vaes = f"{len(result.matches)} VAE{'s' if len(result.matches) > 1 else ''}"
        if any(hit.kind in ("slug", "name", "alias") for match in result.matches for hit in match.matched):
            return fail_line(f"{args.query} is ambiguous: {vaes} go by it; use a hash")
        return fail_line(f"{args.query} is ambiguous: it matches {values} hashes of {vaes}; give more digits")
    return ExitStatus.OK


def _print_match(match) -> None:
    # Each value escaped (a registry file may be edited by hand, a label may be a file's name); the notes
    # keep their own lines, each escaped.
    say(match.label)
    fields = [
        ("slug", match.slug),
        ("id", match.id or "(not known yet: no copy scanned)"),
        ("aliases", ", ".join(match.aliases)),
        ("family", match.family),
        ("base", ", ".join(match.bases)),
        ("notes", ("\n" + " " * 12).join(printable(line) for line in (match.notes or "").split("\n"))),
        ("flags", ", ".join(match.flags)),
        ("matched", "; ".join(f"{hit.kind} {hit.value}" for hit in match.matched)),
    ]
    for label, value in fields:
        if value:
            print(f"  {label:<9} {value if label == 'notes' else printable(value)}")
    if not match.copies:
        print("  copies    none on this machine")
        return
    standalone = sum(not copy.embedded for copy in match.copies)
    print(f"  copies    {len(match.copies)} ({standalone} standalone, {len(match.copies) - standalone} embedded)")
    rows = [
        (copy.path, copy.format or "-", copy.dtype or "-", human_size(copy.size),
         "embedded" if copy.embedded else "standalone")
        for copy in match.copies
    ]
    print_table(("path", "format", "dtype", "size", "stored"), rows)


def _print_candidates(result) -> None:
    rows = [
        (hit.kind, hit.value, short(match.id) if match.id else f"vae.{match.slug}", match.label, len(match.copies))
        for match in result.matches
        for hit in match.matched
    ]
    print_table(("kind", "value", "vae", "name", "copies"), rows)
