"""Ids and whole-file hashes of fixed files, pinned: speed work must never change a single bit of them.

The values below were computed by the code as it stood before the identity pass, the fp16 rounding and the
whole-file hashing were made faster (commit 14172c2). The files hold every kind of float32 the rounding
treats differently (normals, ties, fp16 subnormals, overflow to infinity, infinities, NaNs with payloads,
negative zero), tensors larger than one rounding chunk, and files larger than one read block; the identity
pass is pinned both in one thread and in the thread pool.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import factory
import numpy as np
import pytest

import vaereg.identity.digest as digest_module
import vaereg.identity.fp16 as fp16_module
from vaereg.identity.analyze import analyze

#: float32 bit patterns that sit on the edges of fp16's rounding
EDGES = np.array(
    [
        0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x33000000, 0x33000001, 0x337FFFFF, 0x38800000,
        0x387FE000, 0x387FF000, 0x387FF001, 0x3F801000, 0x3F803000, 0x3F801001, 0x477FE000, 0x477FEFFF,
        0x477FF000, 0x47800000, 0x7F7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFC12345,
    ],
    dtype=np.uint32,
)


def _seasoned(sd: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """`sd` with 2% of the values of every tensor replaced by arbitrary bit patterns, and the edge values
    written into the largest tensors."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, values in sorted(sd.items()):
        bits = values.astype(np.float32).reshape(-1).view(np.uint32).copy()
        pick = rng.random(bits.size) < 0.02
        bits[pick] = rng.integers(0, 1 << 32, int(pick.sum()), dtype=np.uint64).astype(np.uint32)
        if bits.size >= 100_000:
            where = rng.choice(bits.size, EDGES.size * 4, replace=False)
            bits[where] = np.tile(EDGES, 4)
        out[name] = bits.view(np.float32).reshape(values.shape)
    return out


def _bf16(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """bf16 by truncation, stored through ml_dtypes (safetensors writes its BF16 dtype)."""
    import ml_dtypes

    return {k: (v.view(np.uint32) >> 16).astype(np.uint16).view(ml_dtypes.bfloat16) for k, v in sd.items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pinned")
    vae = _seasoned(factory.make_vae(ch=32, seed=7), seed=11)
    with np.errstate(over="ignore", invalid="ignore"):
        fp16 = {k: v.astype(np.float16) for k, v in vae.items()}
    return {
        "fp32": factory.save_safetensors(vae, folder / "vae-fp32.safetensors", metadata={"format": "pt"}),
        "fp16": factory.save_safetensors(fp16, folder / "vae-fp16.safetensors"),
        "bf16": factory.save_safetensors(_bf16(vae), folder / "vae-bf16.safetensors"),
        "checkpoint": factory.save_safetensors(factory.make_checkpoint(vae, seed=3), folder / "model.safetensors"),
        "ckpt": factory.save_ckpt(vae, folder / "vae.pt"),
    }


def _values(path: Path, plugins) -> dict[str, object]:
    report, stats = analyze(path, plugins, with_file_hashes=True, with_stats=True)
    assert report.ok, report.error
    vae = report.vae
    assert vae is not None and report.file is not None
    tensors = hashlib.sha256(
        "".join(f"{n} {t.dtype} {t.shape} {t.digest} {t.exact_digest}\n" for n, t in sorted(vae.tensor_digests.items())).encode()
    ).hexdigest()
    nonfinite = sum(s.nonfinite for s in stats.values())
    zero = sorted(n for n, s in stats.items() if s.all_zero)
    return {
        "ids": (vae.id, vae.exact_id, vae.encoder_id, vae.decoder_id),
        "tensors": tensors,
        "sketch": hashlib.sha256(vae.sketch).hexdigest(),
        "stats": (nonfinite, tuple(zero)),
        "file": report.file.to_json(),
    }


PINNED: dict[str, dict[str, object]] = {
    "fp32": {
        "ids": (
            "adf0757e398c1a58b39dd0a7be4977f8", "80ce881222305e71eada4290629ee4db",
            "0bed9a3e94e22fae865cbc7e4db26b60", "4f0054eb73fe422eb659d3c03a4bb7fe",
        ),
        "tensors": "e698e0fe5c1dba0fd241a366cb921948491c911aefa1c5530ca0b66bfae76f94",
        "sketch": "765d5912636c61f58ba0afc4be93f01faf3d85e1d91895c7663c2aefd84515cc",
        "stats": (1020, ()),
        "file": {
            "size": 21034844,
            "sha256": "4220c2d7587aa8e1d622c8ce7a9dd482b25c5c7268e35fcff9cc1b2dd23e46b4",
            "autov1": "e3655e70",
            "autov2": "4220c2d758",
            "autov3": "b4ef85b6debf",
            "blake3": "7f089b54e2a1f5b46ed3ca062812f5df055ac6c99f649eb3490755b1bca2d38d",
            "crc32": "d5ac5114",
        },
    },
    "fp16": {
        "ids": (
            "adf0757e398c1a58b39dd0a7be4977f8", "c51a035317c098059a9918262edf10f0",
            "0bed9a3e94e22fae865cbc7e4db26b60", "4f0054eb73fe422eb659d3c03a4bb7fe",
        ),
        "tensors": "b13a2929052f4455c1664e4980d6fb706a34ba2bf4a9bb005b1ec406eccdbce0",
        "sketch": "4a71f6aee9163e30a580b2c5d11f6c07f1157db9ffb44614d5c16ce6d0d66abe",
        "stats": (46825, ()),
        "file": {
            "size": 10529590,
            "sha256": "1f6e81374dbd2825b6e5e541ff9ded8c395c615bd32d371d3db0a20f8d12583d",
            "autov1": "eddbfce2",
            "autov2": "1f6e81374d",
            "autov3": "aa9dccbd4ea0",
            "blake3": "e3ee787e5031f8732273a66a432eb81a6c48b25cde1514ce86932223a42e1758",
            "crc32": "4da1ff13",
        },
    },
    "bf16": {
        "ids": (
            "67cf91793edec355f1d10e08706c272f", "8d558231a46af635ea6787b31db12d86",
            "e73406c315f2d04084bd8290da63d97a", "91efe1bdc83cf8c6dad02eb5edc7776b",
        ),
        "tensors": "8bb788b36c398b64724e19eafbc7862d0676b67cebd77f58aaa495f7b94c15c5",
        "sketch": "9c6a83196db3e2defbd2fc109e4ac4a232fb936f0b71448b80f4d1da9813824d",
        "stats": (1020, ()),
        "file": {
            "size": 10529838,
            "sha256": "2d65b071a4a9e7d124d6c8e4b917c6db2dd4bc9d9e2f5703db9e9e2a17205782",
            "autov1": "63b34f37",
            "autov2": "2d65b071a4",
            "autov3": "73c5d07519e6",
            "blake3": "7a4edb375921ebd63cca4638130acd09fccb9d76f7a41aa19052a3e6c0aeeffa",
            "crc32": "a6f01c83",
        },
    },
    "checkpoint": {
        "ids": (
            "adf0757e398c1a58b39dd0a7be4977f8", "80ce881222305e71eada4290629ee4db",
            "0bed9a3e94e22fae865cbc7e4db26b60", "4f0054eb73fe422eb659d3c03a4bb7fe",
        ),
        "tensors": "e698e0fe5c1dba0fd241a366cb921948491c911aefa1c5530ca0b66bfae76f94",
        "sketch": "765d5912636c61f58ba0afc4be93f01faf3d85e1d91895c7663c2aefd84515cc",
        "stats": (1020, ()),
        "file": {
            "size": 21053292,
            "sha256": "7d0a8df67d0188b3626aa13044ca9fbb7bdbee3f0af41166a9be97074173ef8d",
            "autov1": "8cc0f189",
            "autov2": "7d0a8df67d",
            "autov3": "4608120c23db",
            "blake3": "1922917695f3162f03506384c5373adadf98ac0890352b9e01fe0f94d7f4188e",
            "crc32": "39bcd306",
        },
    },
    "ckpt": {  # the same weights as fp32, so the same ids; torch's zip bytes are not pinned
        "ids": (
            "adf0757e398c1a58b39dd0a7be4977f8", "80ce881222305e71eada4290629ee4db",
            "0bed9a3e94e22fae865cbc7e4db26b60", "4f0054eb73fe422eb659d3c03a4bb7fe",
        ),
        "tensors": "e698e0fe5c1dba0fd241a366cb921948491c911aefa1c5530ca0b66bfae76f94",
        "sketch": "765d5912636c61f58ba0afc4be93f01faf3d85e1d91895c7663c2aefd84515cc",
        "stats": (1020, ()),
    },
}


@pytest.mark.parametrize("rounding", ["kernel", "numpy"])
@pytest.mark.parametrize("pooled", [False, True], ids=["one-thread", "pool"])
@pytest.mark.parametrize("name", ["fp32", "fp16", "bf16", "checkpoint", "ckpt"])
def test_ids_and_hashes_are_pinned(files, plugins, name, pooled, rounding, monkeypatch):
    """Pinned through the compiled kernel's one pass and through the numpy-only path (no C compiler)."""
    if rounding == "numpy":
        monkeypatch.setattr(digest_module, "kernel", None)
        monkeypatch.setattr(fp16_module, "kernel", None)
    else:
        assert digest_module.kernel is not None, "the compiled fp16 kernel was not built"
    if pooled:
        monkeypatch.setattr(digest_module, "PARALLEL_MIN_BYTES", 0)
    else:
        monkeypatch.setattr(digest_module, "PARALLEL_MIN_BYTES", 1 << 62)
    got = _values(files[name], plugins)
    if name == "ckpt":  # torch's zip writer is not byte-stable across versions: its file hashes are not pinned
        got.pop("file")
    assert got == PINNED[name]


def test_fp16_and_fp32_copies_share_the_id(files, plugins):
    ids = {name: _values(files[name], plugins)["ids"] for name in ("fp32", "fp16", "checkpoint", "ckpt")}
    assert len({v[0] for v in ids.values()}) == 1  # id
    assert ids["fp32"][1] != ids["fp16"][1]  # exact_id
