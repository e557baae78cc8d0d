"""Seeded fuzzing of real-layout model files through the CLI: a result or one clean line, never more.

A real-layout VAE is saved as safetensors and as a torch.save checkpoint, then mutated many ways: bytes of
the safetensors header, its fields set to hostile values, its length prefix; opcodes of the checkpoint's
data.pkl replaced, inserted, deleted or repeated (the archive rewritten so its checksums still match, so
that the mutations reach the unpickler), bytes of the zip directory; truncations of both. One `vaereg hash`
call takes every mutant under a memory and a time limit, and each must come out as a table row or as
exactly one `vaereg: PATH: reason` line, with no traceback and no internal error.
"""

from __future__ import annotations

import json
import pickle
import random
import struct
import zipfile
from pathlib import Path

import pytest

from clirun import assert_clean_line, run_vaereg
from factory import make_checkpoint, make_vae, save_ckpt, save_safetensors

SEED = 11
MUTANTS_PER_FORMAT = 70
PEAK_RSS = 400 << 20

HOSTILE_VALUES = [
    0, -1, 1, 2**31, 2**32 + 1, 2**62, 2**63, 2**64, 2**64 + 1, 10**30, 1.5, "F32", "", None, True, [], {},
    [2**62, 2**62], [0] * 70, [1] * 1000, [[[[]]]], [-1, 0], [0, 2**64], ["0"], [1, [2]],
]
DTYPES = ["F32", "F16", "BF16", "U8", "F4", "F6_E2M3", "C64", "F128", "f32", "", "BOOL"]
# Every opcode byte the pure-Python unpickler knows, plus a few it does not.
OPCODES = sorted({op.code.encode("latin-1") for op in __import__("pickletools").opcodes} | {b"\xff", b"\x00", b"Z"})


def _safetensors_mutant(rng: random.Random, base: bytes) -> bytes:
    n = struct.unpack("<Q", base[:8])[0]
    header, data = base[8 : 8 + n], base[8 + n :]
    kind = rng.randrange(5)
    if kind == 0:  # random bytes in the header
        raw = bytearray(header)
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return struct.pack("<Q", len(raw)) + bytes(raw) + data
    if kind == 1:  # a field of one tensor set to a hostile value
        doc = json.loads(header)
        name = rng.choice([k for k in doc if k != "__metadata__"])
        field = rng.choice(["dtype", "shape", "data_offsets"])
        doc[name][field] = rng.choice(DTYPES if field == "dtype" and rng.random() < 0.5 else HOSTILE_VALUES)
        raw = json.dumps(doc).encode()
        return struct.pack("<Q", len(raw)) + raw + data
    if kind == 2:  # the length prefix
        return struct.pack("<Q", rng.choice([0, 1, n - 1, n + 1, 2**63, 2**64 - 1, 100_000_001, len(base)])) + base[8:]
    if kind == 3:  # truncated
        return base[: rng.randrange(len(base))]
    # a tensor name with control characters, and its entry damaged
    doc = json.loads(header)
    name = rng.choice([k for k in doc if k != "__metadata__"])
    doc[name + "\n\x1b[2K\r\x00"] = doc.pop(name)
    doc[name + "\n\x1b[2K\r\x00"]["data_offsets"] = [0, 2**40]
    raw = json.dumps(doc).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _mutate_pickle(rng: random.Random, data: bytes) -> bytes:
    raw = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(2, len(raw))  # keep the PROTO opcode
        kind = rng.randrange(4)
        if kind == 0:
            raw[at : at + 1] = rng.choice(OPCODES)
        elif kind == 1:
            raw[at:at] = rng.choice(OPCODES) + bytes(rng.randrange(256) for _ in range(rng.randrange(5)))
        elif kind == 2:
            del raw[at : at + rng.randint(1, 8)]
        else:
            length = rng.randint(1, 40)
            raw[at:at] = raw[at : at + length] * rng.randint(2, 50)
    return bytes(raw)


def _torch_mutant(rng: random.Random, base: Path, out: Path) -> None:
    kind = rng.randrange(4)
    if kind <= 1:  # data.pkl opcodes, archive rewritten with matching checksums
        with zipfile.ZipFile(base) as archive, zipfile.ZipFile(out, "w") as rewritten:
            for info in archive.infolist():
                content = archive.read(info)
                if info.filename.endswith("/data.pkl"):
                    content = _mutate_pickle(rng, content)
                rewritten.writestr(info.filename, content)
        return
    raw = bytearray(base.read_bytes())
    if kind == 2:  # bytes of the central directory and end record
        start = raw.rfind(b"PK\x01\x02", 0, raw.rfind(b"PK\x05\x06"))
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(start, len(raw))
            raw[at] = rng.randrange(256)
    else:  # truncated
        del raw[rng.randrange(len(raw)) :]
    out.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def mutants(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    rng = random.Random(SEED)
    folder = tmp_path_factory.mktemp("fuzz")
    vae = make_vae(ch=4)
    base_st = save_safetensors(vae, folder / "base.safetensors").read_bytes()
    base_ckpt = save_ckpt(make_checkpoint(vae), folder / "base.ckpt")
    paths = []
    for i in range(MUTANTS_PER_FORMAT):
        path = folder / f"m{i:03d}.safetensors"
        path.write_bytes(_safetensors_mutant(rng, base_st))
        paths.append(path)
        path = folder / f"m{i:03d}.ckpt"
        _torch_mutant(rng, base_ckpt, path)
        paths.append(path)
    return paths, [folder / "base.safetensors", base_ckpt]


def test_every_mutant_gives_a_result_or_one_clean_line(mutants: tuple[list[Path], list[Path]], tmp_path: Path) -> None:
    paths, bases = mutants
    run = run_vaereg("hash", "--no-file-hashes", *paths, *bases, home=tmp_path / "home")
    assert not run.killed, "the time limit was reached"
    assert run.returncode in (0, 1), run.stderr[-2000:]
    assert "Traceback" not in run.stderr + run.stdout
    assert run.peak_rss < PEAK_RSS, f"peak RSS {run.peak_rss >> 20} MiB"
    rows = {line.split("  ")[0] for line in run.stdout.splitlines()[1:]}
    problems: dict[str, list[str]] = {}
    for line in run.problems():
        path = next((str(p) for p in paths if line.startswith(f"vaereg: {p}: ")), None)
        assert path is not None, f"a line that names no file: {line!r}"
        problems.setdefault(path, []).append(assert_clean_line(line, path))
    for path in map(str, paths):
        assert (path in rows) + len(problems.get(path, [])) == 1, (path, problems.get(path))
    assert not [p for p in problems.values() if p[0].startswith("internal error")], problems
    assert {str(b) for b in bases} <= rows  # the originals identify, after every mutant
    # The mutations reach deep enough to be refused for many different reasons.
    assert len({reason.split(":")[0] for reasons in problems.values() for reason in reasons}) >= 10
