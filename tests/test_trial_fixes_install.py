"""The pip command `install-extension` prints is one to paste: shell words that give pip the requirements and
markers intended (a user trial got ``"tomli>=2; python_version < "3.11""``), installing vaereg from where
this copy came from (a local folder or a VCS URL, not ``vaereg==VERSION`` from an index it never was on)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from vaereg.actions.install import install_source, pip_command, source_of
from vaereg.cli import main

REPO = Path(__file__).resolve().parent.parent


def _deps() -> list[str]:
    """vaereg's requirements other than torch and the extras: what the second pip command installs."""
    requires = metadata.requires("vaereg") or []
    return [r for r in requires if "extra ==" not in r and not r.lower().startswith("torch")]


def _commands(line: str) -> list[list[str]]:
    """A POSIX shell line of commands joined by ``&&``, as the argument lists the shell runs."""
    words, argvs = shlex.split(line), [[]]
    for word in words:
        if word == "&&":
            argvs.append([])
        else:
            argvs[-1].append(word)
    return argvs


def _check_requirements(requirements: list[str]) -> None:
    try:
        from packaging.requirements import Requirement
    except ImportError:  # the argument lists were compared already
        return
    for text in requirements:
        requirement = Requirement(text)  # raises InvalidRequirement/InvalidMarker, as pip did
        if "python_version" in text:
            assert requirement.marker is not None and requirement.marker.evaluate({"python_version": "3.10"})


def _comfyui(root: Path) -> Path:
    (root / "comfy").mkdir(parents=True)
    for name in ("main.py", "folder_paths.py"):
        (root / name).write_text("")
    return root


def _comfyui_with_venv(root: Path) -> Path:
    _comfyui(root)
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    # a stand-in for the launcher's Python: prints the arguments it was given, one JSON list per run
    python.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "
                      "'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"\n")
    python.chmod(0o755)
    return python


@pytest.mark.skipif(os.name == "nt", reason="a POSIX shell runs the printed line")
def test_printed_pip_command_is_shell_words_pip_understands(tmp_path, capsys):
    python = _comfyui_with_venv(tmp_path / "Bob's ComfyUI (test)")
    root = python.parents[2]
    assert main(["install-extension", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    said = next(n for n, line in enumerate(out) if line.startswith("vaereg must be importable in"))
    assert out[said] == f"vaereg must be importable in {python}; install it there with:"
    line = out[said + 1].strip()
    intended = [[str(python), "-m", "pip", "install", "--no-deps", install_source()],
                [str(python), "-m", "pip", "install", *_deps()]]
    assert _commands(line) == intended
    assert any("python_version" in dep for dep in _deps())  # the marker that broke is among them
    _check_requirements(_deps())
    # pasted into a shell, each pip gets exactly those arguments
    ran = subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True)
    assert [json.loads(printed) for printed in ran.stdout.splitlines()] == [argv[1:] for argv in intended]

    assert main(["install-extension", str(root), "--json"]) == 0
    assert _commands(json.loads(capsys.readouterr().out)["pip"]) == intended


def test_without_the_launchers_python_the_command_still_parses(tmp_path, capsys):
    root = _comfyui(tmp_path / "ComfyUI")
    assert main(["install-extension", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["python"] is None
    assert _commands(out["pip"]) == [["python", "-m", "pip", "install", "--no-deps", install_source()],
                                     ["python", "-m", "pip", "install", *_deps()]]


def _windows_split(line: str) -> list[str]:
    """How a program's C runtime splits its command line (CommandLineToArgvW's rules), checking on the way
    that cmd.exe would act on no character outside double quotes."""
    args, current, quoted, i, word = [], [], False, 0, False
    while i < len(line):
        c = line[i]
        if c == "\\":
            n = len(line[i:]) - len(line[i:].lstrip("\\"))
            if i + n < len(line) and line[i + n] == '"':
                current.append("\\" * (n // 2))
                if n % 2:
                    current.append('"')
                    i += n + 1
                else:
                    i += n
                word = True
                continue
            current.append("\\" * n)
            i, word = i + n, True
            continue
        if c == '"':
            quoted, word = not quoted, True
        elif c in " \t" and not quoted:
            if word:
                args.append("".join(current))
            current, word = [], False
        else:
            assert quoted or c not in "<>|&^()%!", f"cmd.exe acts on {c!r} in {line!r}"
            current.append(c)
            word = True
        i += 1
    if word:
        args.append("".join(current))
    return args


def test_windows_command_is_quoted_for_cmd_exe():
    python = Path("C:/Program Files/ComfyUI portable/python_embeded/python.exe")
    line = pip_command(python, windows=True)
    first, second = line.split(" && ")
    assert _windows_split(first) == [str(python), "-m", "pip", "install", "--no-deps", install_source()]
    expected = [dep.replace('"', "'") if ";" in dep else dep for dep in _deps()]
    assert _windows_split(second) == [str(python), "-m", "pip", "install", *expected]
    _check_requirements(expected)  # markers in single quotes are the same markers


def test_the_source_named_is_where_this_vaereg_came_from(tmp_path):
    clone = tmp_path / "my clone" / "vaereg"
    from_folder = json.dumps({"url": clone.as_uri(), "dir_info": {}})
    assert source_of(from_folder, "0.1.0") == str(clone)
    editable = json.dumps({"url": clone.as_uri(), "dir_info": {"editable": True}})
    assert source_of(editable, "0.1.0") == str(clone)
    from_git = json.dumps({"url": "https://github.com/someone/vaereg.git",
                           "vcs_info": {"vcs": "git", "commit_id": "a" * 40, "requested_revision": "main"}})
    assert source_of(from_git, "0.1.0") == f"git+https://github.com/someone/vaereg.git@{'a' * 40}"
    wheel = tmp_path / "vaereg-0.1.0-py3-none-any.whl"
    assert source_of(json.dumps({"url": wheel.as_uri(), "archive_info": {}}), "0.1.0") == str(wheel)
    assert source_of(None, "0.1.0") == "vaereg==0.1.0"  # from an index: pip writes no direct_url.json
    assert source_of("not json", "0.1.0") == "vaereg==0.1.0"


def test_installed_from_a_local_clone_names_that_clone(tmp_path):
    """`pip install .` from a clone (not editable): the command installs from the clone, not from an index."""
    import importlib.util

    clone = tmp_path / "my clone"
    shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "*.egg-info",
                                                              "bench", "tests"))
    site = tmp_path / "site"
    # With setuptools at hand nothing is fetched; without it (Python 3.12+ venvs) pip gets it from the index the
    # test suite was installed from, as `pip install .` does.
    offline = ["--no-build-isolation", "--no-index"] if importlib.util.find_spec("setuptools") else []
    built = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", *offline, "-q", "--target", str(site), str(clone)],
        capture_output=True, text=True,
    )
    assert built.returncode == 0, built.stderr
    launcher = _comfyui(tmp_path / "ComfyUI")
    code = ("import sys, vaereg; from vaereg.cli import main; print(vaereg.__file__, file=sys.stderr);"
            "sys.exit(main(['install-extension', sys.argv[1], '--json']))")
    run = subprocess.run([sys.executable, "-c", code, str(launcher)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(site)}, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip() == str(site / "vaereg" / "__init__.py")
    first = _commands(json.loads(run.stdout)["pip"])[0]
    assert first == ["python", "-m", "pip", "install", "--no-deps", str(clone)]
