"""One voice: problems as `vaereg: PATH: reason` on stderr, progress never in stdout, quiet closed pipes,
names shown where a person reads them, verdicts as sentences, names that are not UTF-8."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import factory
import numpy as np
import pytest

from vaereg.cli import main
from vaereg.identity.analyze import identify
from vaereg.store.index import Index

# -- problems on stderr, the same words for the same cause


def test_every_command_says_a_missing_file_the_same_way(tmp_path, capsys):
    gone = tmp_path / "gone.safetensors"
    good = factory.save_safetensors(factory.make_vae(), tmp_path / "good.safetensors")
    expected = f"vaereg: {gone}: no such file or directory\n"
    for argv in (["hash", str(gone)], ["diff", str(good), str(gone)], ["check", str(gone)],
                 ["extract", str(gone), "-o", str(tmp_path / "out.safetensors")]):
        assert main(argv) == 1, argv
        captured = capsys.readouterr()
        assert captured.err == expected, argv
        assert "Errno" not in captured.out + captured.err
    for argv in (["scan", str(gone)], ["dedupe", str(gone)]):
        assert main(argv) == 2, argv
        assert capsys.readouterr().err == expected, argv


def test_hash_names_a_known_vae_and_reports_problems_on_stderr(tmp_path, capsys, plugins):
    vae = factory.save_safetensors(factory.make_vae(seed=5), tmp_path / "mine.safetensors")
    bad = tmp_path / "bad\nname.safetensors"
    bad.write_bytes(b"\x00" * 40)
    vae_id = identify(vae, plugins).vae.id
    assert main(["hash", str(vae)]) == 0
    assert "unnamed" in capsys.readouterr().out
    assert main(["scan", str(vae)]) == 0
    assert main(["name", vae_id[:12], "My VAE"]) == 0
    capsys.readouterr()

    assert main(["hash", str(vae), str(bad)]) == 1
    captured = capsys.readouterr()
    header, row = captured.out.splitlines()
    assert header.split()[:3] == ["path", "name", "format"]
    assert row.split("  ")[0] == str(vae) and "My VAE" in row
    # one line, the newline in the name escaped
    assert captured.err.splitlines() == [f"vaereg: {tmp_path}/bad\\nname.safetensors: " + captured.err.split(": ", 2)[2].strip()]

    assert main(["hash", str(bad), "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"] and captured.err.startswith("vaereg: ")


# -- progress: on stderr, on a terminal, never in --json


def _run_with_tty_stderr(argv: list[str], env: dict[str, str]) -> tuple[int, str, bytes]:
    """Run vaereg with stdout a pipe and stderr a terminal; returns (status, stdout, what the terminal got)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "vaereg", *argv], stdout=subprocess.PIPE, stderr=terminal,
                            env={**env, "COLUMNS": "100", "TERM": "xterm"})
    os.close(terminal)
    out = proc.stdout.read().decode()
    status = proc.wait()
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal is closed once the process is gone
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    return status, out, seen


def test_progress_goes_to_a_terminal_stderr_and_never_into_json(tmp_path):
    files = [factory.save_safetensors(factory.make_vae(seed=n), tmp_path / f"v{n}.safetensors") for n in range(3)]
    env = dict(os.environ)
    status, out, terminal = _run_with_tty_stderr(["hash", *map(str, files)], env)
    assert status == 0 and b"hashing" in terminal  # the bar, drawn on the terminal
    assert "hashing" not in out and out.splitlines()[0].startswith("path")
    status, out, terminal = _run_with_tty_stderr(["hash", "--json", *map(str, files)], env)
    assert status == 0 and b"hashing" not in terminal
    assert [json.loads(line)["path"] for line in out.splitlines()] == list(map(str, files))


# -- a closed pipe


def _many_copies(tmp_path: Path, config, plugins, n: int) -> Path:
    """An index with one VAE in `n` files (hard links: recorded without reading each)."""
    lib = tmp_path / "lib"
    lib.mkdir()
    first = factory.save_safetensors(factory.make_vae(), lib / "vae-0000.safetensors")
    report = identify(first, plugins)
    with Index(config.index) as index:
        for k in range(n):
            path = lib / f"vae-{k:04}.safetensors"
            if k:
                os.link(first, path)
            index.record(str(path), path.stat(), report)
    return lib


@pytest.mark.parametrize("argv", [["ls", "--json"], ["ls", "-v"], ["dedupe", "{lib}"], ["hash", "--json", "{many}"]])
def test_a_closed_pipe_exits_quietly(tmp_path, config, plugins, argv):
    lib = _many_copies(tmp_path, config, plugins, 1500)
    other = tmp_path / "other"
    other.mkdir()
    factory.save_safetensors(factory.make_vae(), other / "same.safetensors")  # a second inode of the same bytes
    for k in range(1500):
        os.link(other / "same.safetensors", other / f"same-{k:04}.safetensors")
    many = [str(lib / "vae-0000.safetensors")] * 300
    args = []
    for a in argv:
        if a == "{lib}":
            args += [str(lib), str(other)]
        elif a == "{many}":
            args += many
        else:
            args.append(a)
    vaereg = subprocess.Popen([sys.executable, "-m", "vaereg", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-1"], stdin=vaereg.stdout, stdout=subprocess.PIPE)
    vaereg.stdout.close()  # only head reads it now
    first, _ = head.communicate()
    err = vaereg.stderr.read().decode()
    assert vaereg.wait() == 0, err
    assert first and "Traceback" not in err and "Broken pipe" not in err and "BrokenPipe" not in err
    assert err in ("", "vaereg: warning: " + err.split("warning: ", 1)[-1])  # nothing but warnings


# -- ls


def test_ls_verbose_lists_copies_and_unnamed_vaes_show_aliases_or_folder(tmp_path, config, capsys, plugins):
    from test_dedupe_index import _diffusers_folder

    lib = tmp_path / "models"
    lib.mkdir()
    fp32 = factory.make_vae(seed=1)
    factory.save_safetensors(fp32, lib / "anime.safetensors")
    factory.save_safetensors({k: v.astype(np.float16) for k, v in fp32.items()}, lib / "anime-fp16.safetensors")
    _diffusers_folder(factory.make_vae(seed=2), lib / "sd-vae-ft-ema")
    assert main(["scan", str(lib)]) == 0
    anime_id = identify(lib / "anime.safetensors", plugins).vae.id
    assert main(["name", anime_id, "Anime"]) == 0
    assert main(["alias", anime_id, "my-anime-mix"]) == 0
    assert main(["unname", anime_id]) == 0
    capsys.readouterr()

    assert main(["ls", "-v"]) == 0
    out = capsys.readouterr().out
    assert "unnamed (my-anime-mix)" in out and "unnamed (sd-vae-ft-ema)" in out
    weights = lib / "sd-vae-ft-ema" / "diffusion_pytorch_model.safetensors"
    lines = out.splitlines()
    copy_lines = {line.split()[0]: line.split() for line in lines if line.startswith("  /")}
    assert copy_lines[str(lib / "anime-fp16.safetensors")][1:3] == ["safetensors", "F16"]
    assert copy_lines[str(lib / "anime.safetensors")][1:3] == ["safetensors", "F32"]
    assert copy_lines[str(weights)][-1] == "standalone"


# -- extract


def test_extract_refuses_an_existing_output_before_reading_the_model(tmp_path, capsys, monkeypatch):
    import vaereg.actions.extract as extract

    model = factory.save_safetensors(factory.make_checkpoint(factory.make_vae()), tmp_path / "model.safetensors")
    out = tmp_path / "vae.safetensors"
    out.write_bytes(b"mine")

    def no_reading(*args, **kwargs):
        raise AssertionError("the model was opened")

    monkeypatch.setattr(extract, "open_model", no_reading)
    assert main(["extract", str(model), "-o", str(out)]) == 1
    assert capsys.readouterr().err == f"vaereg: {out} exists: use --force to replace it\n"
    assert main(["extract", str(model), "-o", str(tmp_path / "vae.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"vaereg: {tmp_path / 'vae.pt'} would hold a safetensors file under a pickle's name (.pt)")
    assert err.endswith("name it vae.safetensors\n")
    assert out.read_bytes() == b"mine" and not (tmp_path / "vae.pt").exists()


def test_extract_warns_about_an_output_without_a_model_ending(tmp_path, capsys):
    model = factory.save_safetensors(factory.make_checkpoint(factory.make_vae()), tmp_path / "model.safetensors")
    assert main(["extract", str(model), "-o", str(tmp_path / "vae.out")]) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"vaereg: warning: {tmp_path / 'vae.out'} does not end in .safetensors:"
                            " launchers list VAE files by their ending\n")
    assert captured.out.startswith(f"wrote {tmp_path / 'vae.out'}: ")


# -- names that are not UTF-8


@pytest.mark.skipif(sys.platform == "win32", reason="Windows file names are UTF-16")
def test_a_name_that_is_not_utf8_is_indexed_and_shown_escaped(tmp_path, config, capsys):
    lib = tmp_path / "lib"
    lib.mkdir()
    raw = os.fsencode(lib) + b"/caf\xe9-vae.safetensors"  # Latin-1 bytes, as an old archive tool writes them
    with open(raw, "wb") as f:
        f.write(factory.save_safetensors(factory.make_vae(), tmp_path / "v.safetensors").read_bytes())
    name = os.fsdecode(raw)  # "caf\udce9-vae.safetensors"

    assert main(["scan", str(lib)]) == 0
    capsys.readouterr()
    with Index(config.index) as index:
        row = index.get(name)
        assert row is not None and row.error is None and list(index.paths_under(str(lib))) == [name]
    assert main(["ls", "-v"]) == 0
    assert f"  {lib}/caf\\udce9-vae.safetensors" in capsys.readouterr().out
    assert main(["ls", "--json"]) == 0
    line = capsys.readouterr().out
    line.encode("utf-8")  # valid UTF-8 (the byte as a JSON escape)
    assert json.loads(line)["copies"][0]["path"] == name  # and json.loads gives the name back
    assert main(["scan", str(lib), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unchanged"] == 1
    os.unlink(raw)
    assert main(["scan", str(lib), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == 1


def test_names_taken_from_hostile_file_names_reach_the_terminal_escaped(tmp_path, config, capsys):
    """An unnamed VAE is called after its file: a newline, an escape code or a byte that is not UTF-8 in
    that name is escaped wherever a sentence uses it (check, fix), and a scan rooted at such a file works."""
    from library import make_webui, mix

    webui = make_webui(tmp_path / "webui")
    vae_dir, ckpt_dir = webui / "models" / "VAE", webui / "models" / "Stable-diffusion"
    vaes = {"a": factory.make_vae(seed=1), "b": factory.make_vae(seed=2)}
    factory.save_safetensors(vaes["a"], vae_dir / "Anything\nvae\x1b[31m.safetensors")
    latin1 = os.fsdecode(os.fsencode(vae_dir) + b"/caf\xe9.safetensors")
    factory.save_safetensors(vaes["b"], Path(latin1))
    merged = factory.save_safetensors(factory.make_checkpoint(mix({"a": 0.5, "b": 0.5}, vaes)), ckpt_dir / "mix.safetensors")

    assert main(["scan", latin1]) == 0  # a root that is itself a file with such a name
    assert main(["scan", str(webui / "models")]) == 0
    capsys.readouterr()
    assert main(["check", str(merged)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\udce9" not in out
    assert "Anything\\nvae\\x1b[31m.safetensors" in out and "caf\\udce9.safetensors" in out
    assert all(line.startswith(("  ", str(merged))) for line in out.splitlines())  # no line broken by a name
    assert main(["fix", "--launcher", str(webui)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\udce9" not in out and "Anything\\nvae\\x1b[31m.safetensors" in out


# -- check's verdict as sentences


def test_check_verdicts_read_as_sentences_and_name_the_automatic_vae(tmp_path, capsys, plugins):
    lib = tmp_path / "models"
    mse, anime = factory.make_vae(seed=1), factory.make_vae(seed=2)
    (lib / "VAE").mkdir(parents=True)
    factory.save_safetensors(mse, lib / "VAE" / "vae-ft-mse.safetensors")
    factory.save_ckpt(anime, lib / "VAE" / "anime.ckpt")
    (lib / "Stable-diffusion").mkdir()
    model = factory.save_safetensors(factory.make_checkpoint(mse), lib / "Stable-diffusion" / "model.safetensors")
    assert main(["scan", str(lib)]) == 0
    assert main(["name", identify(lib / "VAE" / "vae-ft-mse.safetensors", plugins).vae.id, "vae-ft-mse-840000"]) == 0
    assert main(["name", identify(lib / "VAE" / "anime.ckpt", plugins).vae.id, "Anime VAE"]) == 0
    capsys.readouterr()

    assert main(["check", str(model)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [str(model), "  Its own VAE is fine: vae-ft-mse-840000 (healthy)."]

    beside = factory.save_ckpt(anime, lib / "Stable-diffusion" / "model.vae.pt")
    assert main(["scan", str(lib)]) == 0
    capsys.readouterr()
    assert main(["check", str(model)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:3] == [
        "  Its own VAE is fine: vae-ft-mse-840000 (healthy).",
        f"  A1111/Forge's \"Automatic\" VAE setting loads {beside} (Anime VAE) instead of its own VAE.",
    ]

    no_vae = factory.save_safetensors({"model.diffusion_model.out.2.weight": np.ones((4, 8, 3, 3), np.float32)},
                                      tmp_path / "unet.safetensors")
    assert main(["check", str(no_vae)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "  It has no VAE of its own: load an external one."
