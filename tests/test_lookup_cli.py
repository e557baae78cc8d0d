"""vaereg lookup, ls, name, alias and unname on the command line: output, JSON, exit statuses, import cost."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from test_catalog import A_FILES, B_FILES, KINDS, NO_VAE, Library, indexed, library, run  # noqa: F401

from vaereg.cli.common import human_size
from vaereg.config import Config
from vaereg.identity.report import FileHashes
from vaereg.store.index import Index

LOOKUP_KEYS = ["query", "matches", "ambiguous"]
MATCH_KEYS = ["id", "name", "aliases", "family", "latent_channels", "notes", "flags", "matched", "copies"]
COPY_KEYS = ["path", "format", "size", "embedded"]


def test_scan_then_lookup_by_every_kind_and_name_any_copy(library: Library, capsys) -> None:
    status, _, err = run(capsys, "scan", str(library.root))
    assert status == 0, err
    status, out, _ = run(capsys, "name", library.hash("vae.safetensors", "sha256"), "CLI VAE", "--note", "mine",
                         "--flag", "fp16-ok")
    assert status == 0 and "CLI VAE" in out and f"applies to {len(A_FILES)} copies" in out

    for kind in KINDS:
        value = library.hash("checkpoint.safetensors" if kind == "autov1" else "vae-fp16.safetensors", kind)
        status, out, err = run(capsys, "lookup", value.upper())
        assert status == 0, (kind, err)
        first = out.split("\n\n")[0] if kind != "encoder_id" else out  # the fine-tune shares the encoder
        assert "CLI VAE" in first and "mine" in first and "fp16-ok" in first, kind
        for name in A_FILES:
            assert library.path(name) in first, (kind, name)
        assert "embedded" in first and "standalone" in first and "torch-zip" in first

    status, out, _ = run(capsys, "lookup", library.hash("finetune-fp16.safetensors", "sha256")[:7])
    assert status == 0 and out.startswith("unnamed\n")


def test_lookup_json_keeps_the_documented_shape(indexed: Library, capsys) -> None:
    query = indexed.hash("vae.safetensors", "id")[:12]
    status, out, _ = run(capsys, "lookup", query, "--json")
    result = json.loads(out)
    assert status == 0
    assert list(result)[:3] == LOOKUP_KEYS and (result["query"], result["ambiguous"]) == (query, False)
    (match,) = result["matches"]
    assert list(match)[: len(MATCH_KEYS)] == MATCH_KEYS
    assert (match["id"], match["name"], match["family"], match["latent_channels"]) == (
        indexed.hash("vae.safetensors", "id"), None, "kl-f8-4ch", 4
    )
    assert match["matched"] == [{"kind": "id", "value": indexed.hash("vae.safetensors", "id")}]
    assert sorted(copy["path"] for copy in match["copies"]) == sorted(indexed.path(n) for n in A_FILES)
    for copy in match["copies"]:
        assert list(copy)[:4] == COPY_KEYS
        assert copy["size"] == os.stat(copy["path"]).st_size
        assert copy["embedded"] == copy["path"].endswith("checkpoint.safetensors")


def test_lookup_exit_statuses(indexed: Library, capsys) -> None:
    status, out, err = run(capsys, "lookup", "0123456789abcdef")
    assert (status, out, err) == (1, "", "vaereg: nothing matches 0123456789abcdef\n")
    status, out, _ = run(capsys, "lookup", "0123456789abcdef", "--json")
    assert status == 1 and json.loads(out) == {"query": "0123456789abcdef", "matches": [], "ambiguous": False}
    status, _, err = run(capsys, "lookup", indexed.hash(NO_VAE, "sha256"))
    assert status == 1 and "nothing matches" in err
    for query in ("abc12", "not-a-hash"):
        status, _, err = run(capsys, "lookup", query)
        assert status == 2 and err.startswith("vaereg: ") and err.count("\n") == 1


def test_an_ambiguous_prefix_lists_the_candidates_and_fails(indexed: Library, capsys, tmp_path: Path) -> None:
    real = indexed.hash("vae-fp16.safetensors", "sha256")
    twin = real[:8] + ("0" if real[8] != "0" else "1") + real[9:]
    # A copy of the fine-tune whose SHA-256 starts like A's fp16 file (a made-up row).
    fake = replace(indexed.reports["finetune.safetensors"], file=FileHashes(size=1, sha256=twin))
    with Index(Config.load().index) as index:
        index.record(str(tmp_path / "twin.safetensors"), os.stat(indexed.path("finetune.safetensors")), fake)

    status, out, err = run(capsys, "lookup", real[:8])

    assert status == 1 and "ambiguous" in err
    assert real in out and twin in out
    assert indexed.hash("vae.safetensors", "id")[:12] in out and indexed.hash("finetune.safetensors", "id")[:12] in out
    status, out, _ = run(capsys, "lookup", real[:8], "--json")
    result = json.loads(out)
    assert status == 1 and result["ambiguous"] and len(result["matches"]) == 2
    status, _, err = run(capsys, "name", real[:8], "Which one")
    assert status == 1 and "matches 2 VAEs" in err
    assert not Config.load().registry.exists()


def test_ls_shows_one_row_per_vae_with_reclaimable_bytes(indexed: Library, capsys) -> None:
    size = os.stat(indexed.path("vae.safetensors")).st_size
    status, out, err = run(capsys, "ls")
    assert status == 0
    header, *rows = out.splitlines()
    assert header.split() == ["name", "family", "base", "id", "copies", "standalone", "embedded", "reclaimable"]
    cells = [re.split(r"\s{2,}", row.strip()) for row in rows]  # columns are two spaces apart at least
    by_id = {row[3]: row for row in cells}
    # unnamed: called after the first standalone copy, in path order
    assert by_id[indexed.hash("vae.safetensors", "id")[:12]] == [
        "unnamed (copy-a-link.safetensors)", "kl-f8-4ch", "-", indexed.hash("vae.safetensors", "id")[:12], "7", "6",
        "1", human_size(2 * size),
    ]
    assert by_id[indexed.hash("finetune.safetensors", "id")[:12]][0] == "unnamed (finetune-fp16.safetensors)"
    assert by_id[indexed.hash("finetune.safetensors", "id")[:12]][4:] == ["2", "2", "0", "-"]
    assert "2 VAEs in 9 files" in err

    status, out, _ = run(capsys, "ls", "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert status == 0 and len(lines) == 2
    reclaimable = {line["id"]: line["reclaimable_bytes"] for line in lines}
    a_id, b_id = indexed.hash("vae.safetensors", "id"), indexed.hash("finetune.safetensors", "id")
    assert reclaimable == {a_id: 2 * size, b_id: 0}
    for line in lines:
        assert list(line)[:6] == ["id", "name", "family", "latent_channels", "copies", "reclaimable_bytes"]
        assert all({"path", "format", "size", "embedded", "sha256"} <= set(copy) for copy in line["copies"])


def test_ls_of_an_empty_index(capsys) -> None:
    assert run(capsys, "ls") == (0, "", "no VAEs indexed yet: vaereg scan DIR indexes a folder\n")
    assert run(capsys, "ls", "--json")[:2] == (0, "")


def test_name_alias_unname_on_the_command_line(indexed: Library, capsys) -> None:
    registry_file = Config.load().registry
    fp16_sha = indexed.hash("vae-fp16.safetensors", "sha256")
    status, out, _ = run(capsys, "name", indexed.hash("vae.pt", "blake3")[:9], "My VAE", "--dry-run")
    assert status == 0 and "vae.my-vae: name = 'My VAE'" in out and not registry_file.exists()

    status, out, _ = run(capsys, "name", indexed.hash("vae.pt", "blake3")[:9], "My VAE", "--flag", "a", "--flag", "b",
                         "--json")
    written = json.loads(out)
    assert status == 0 and (written["action"], written["slug"], written["changed"]) == ("name", "my-vae", True)
    assert (written["entry"]["name"], written["entry"]["flags"]) == ("My VAE", ["a", "b"])

    status, out, _ = run(capsys, "lookup", fp16_sha, "--json")
    assert json.loads(out)["matches"][0]["name"] == "My VAE"

    status, out, _ = run(capsys, "alias", fp16_sha, "mine", "my-vae")
    assert status == 0 and "aliases: mine, my-vae" in out
    status, out, _ = run(capsys, "unname", fp16_sha, "--json")
    assert status == 0 and json.loads(out)["entry"]["name"] is None  # aliases and flags keep the entry
    status, out, err = run(capsys, "unname", fp16_sha)
    assert (status, err) == (0, "") and out.endswith(": has no name; nothing to change\n")
    status, _, err = run(capsys, "alias", indexed.hash("finetune.safetensors", "id"), "x")
    assert status == 2 and "name it first" in err


def test_lookup_imports_neither_torch_nor_numpy(indexed: Library) -> None:
    code = (
        "import sys; from vaereg.cli import main; status = main(['lookup', sys.argv[1]]); "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'rich', 'safetensors'}); "
        "print(status, heavy, file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, indexed.hash("vae.safetensors", "id")[:8]],
        capture_output=True, text=True, timeout=60,
    )
    assert done.stderr.strip().splitlines()[-1] == "0 []"
    assert indexed.path("vae.pt") in done.stdout
