"""Canonical VAE identities from tensors (docs/identity-spec.md).

Each canonical tensor gets two xxh3-128 digests: over its values rounded to fp16 (floats) and over its
stored values. The ids are digests of sorted manifests of those per-tensor digests, so `encoder_id`,
`decoder_id` and later tensor-level comparisons cost nothing beyond one pass over the VAE's tensors.
Tensors are hashed in a small thread pool: numpy's casts and xxhash release the GIL.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable, Mapping

import numpy as np
import xxhash

from vaereg.identity.dtypes import FLOAT_DTYPES, ML_DTYPES, NUMPY_DTYPES, PACKED_FLOATS
from vaereg.identity.fp16 import round_to_fp16
from vaereg.identity.locate import CanonicalVae, group_of
from vaereg.identity.report import TensorDigest, VaeIdentity
from vaereg.plugin.types import TensorInfo

#: The manifests' format, hashed into every id. Spec v2 (report.SPEC_VERSION) did not change it, so the VAEs
#: whose canonical tensors did not change kept their ids.
MANIFEST_VERSION = 1
#: Values sampled per tensor for the linear sketch.
SKETCH_PER_TENSOR = 32
#: Below this many bytes of tensors, hashing in one thread is faster than starting a pool.
PARALLEL_MIN_BYTES = 16 << 20



def widen_float32(dtype: str, raw: bytes | memoryview) -> np.ndarray | None:
    """Stored float values widened exactly to float32 (None for packed sub-byte dtypes)."""
    if dtype == "BF16":
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    if dtype in ML_DTYPES:
        import ml_dtypes

        return np.frombuffer(raw, dtype=getattr(ml_dtypes, ML_DTYPES[dtype])).astype(np.float32)
    if dtype in ("F32", "F16", "F64"):
        return np.frombuffer(raw, dtype=NUMPY_DTYPES[dtype])
    return None


def _fp16_bytes(
    dtype: str, raw: bytes | memoryview, wide: np.ndarray | None, scratch: "_Scratch | None" = None
) -> bytes | memoryview:
    """The tensor's values rounded to nearest-even fp16, as little-endian bytes (in `scratch` when given).

    `wide` is the stored values widened (`widen_float32`), computed once by the caller for the sketch too.
    """
    if dtype == "F16" or dtype not in FLOAT_DTYPES:
        return raw
    if wide is None:  # packed F4/F6: no fp16 view defined; hashed as stored
        return raw
    out = scratch.halves(wide.size) if scratch is not None else np.empty(wide.size, dtype="<f2")
    if wide.dtype == np.float32:
        return round_to_fp16(wide, out).data
    with np.errstate(over="ignore"):  # beyond fp16's range is infinity, by definition (identity-spec 4)
        np.copyto(out, wide, casting="same_kind")
    return out.data


class _Scratch(threading.local):
    """Per-thread buffers reused from tensor to tensor.

    Fresh memory for every tensor means faulting in hundreds of megabytes of new pages per VAE, which costs
    more than reading and converting the values.
    """

    def __init__(self) -> None:
        self._raw = bytearray()
        self._halves = np.empty(0, dtype="<f2")

    def raw(self, nbytes: int) -> memoryview:
        if len(self._raw) < nbytes:
            self._raw = bytearray(nbytes)
        return memoryview(self._raw)

    def halves(self, count: int) -> np.ndarray:
        if self._halves.size < count:
            self._halves = np.empty(count, dtype="<f2")
        return self._halves[:count]


@dataclass(frozen=True)
class TensorStats:
    """Health facts about one tensor's stored values."""

    nonfinite: int
    all_zero: bool


@lru_cache(maxsize=8192)  # the same names and sizes recur in every VAE of a family
def _positions(name: str, numel: int) -> np.ndarray:
    """Seeded sample positions: a function of the canonical name and size only, so they line up across VAEs."""
    count = min(numel, SKETCH_PER_TENSOR)
    return np.array([xxhash.xxh64_intdigest(f"{name}#{i}".encode()) % numel for i in range(count)], dtype=np.int64)


@dataclass(frozen=True)
class _Digested:
    name: str
    digest: str
    exact_digest: str
    sketch: np.ndarray
    stats: TensorStats | None


def _digest_tensor(
    info: TensorInfo, raw: bytes | memoryview, with_stats: bool, scratch: _Scratch | None = None
) -> _Digested:
    exact = xxhash.xxh3_128_hexdigest(raw)
    wide = widen_float32(info.dtype, raw) if info.dtype in FLOAT_DTYPES else None
    rounded = _fp16_bytes(info.dtype, raw, wide, scratch)
    digest = exact if rounded is raw else xxhash.xxh3_128_hexdigest(rounded)
    if wide is None and info.dtype in NUMPY_DTYPES:
        wide = np.frombuffer(raw, dtype=NUMPY_DTYPES[info.dtype])
    if wide is not None and wide.size:
        sketch = wide[_positions(info.name, wide.size)].astype(np.float32)
    else:
        sketch = np.zeros(0, dtype=np.float32)
    stats = None
    if with_stats:
        if wide is None:
            stats = TensorStats(nonfinite=0, all_zero=not any(bytes(raw)))
        else:
            finite = np.isfinite(wide) if wide.dtype.kind == "f" else np.ones(wide.shape, bool)
            stats = TensorStats(nonfinite=int(wide.size - np.count_nonzero(finite)), all_zero=not wide.any())
    return _Digested(info.name, digest, exact, sketch, stats)


def _manifest_id(domain: str, lines: Iterable[tuple[str, str, tuple[int, ...], str]]) -> str:
    h = xxhash.xxh3_128()
    h.update(f"vaereg-{domain}-v{MANIFEST_VERSION}\n".encode())
    for name, dtype, shape, digest in lines:
        h.update(f"{name} {dtype} {','.join(map(str, shape))} {digest}\n".encode())
    return h.hexdigest()


def _id_dtype(dtype: str) -> str:
    return "F16" if dtype in FLOAT_DTYPES and dtype not in PACKED_FLOATS else dtype


def _storage_dtype(infos: Iterable[TensorInfo]) -> str:
    floats = {i.dtype for i in infos if i.dtype in FLOAT_DTYPES}
    return floats.pop() if len(floats) == 1 else ("mixed" if floats else "none")


def ids_from_digests(vae: Mapping[str, TensorDigest]) -> dict[str, str]:
    """`id`, `exact_id`, `encoder_id` and `decoder_id` from per-tensor digests (canonical names)."""
    names = sorted(vae)
    rounded = [(n, _id_dtype(vae[n].dtype), vae[n].shape, vae[n].digest) for n in names]
    exact = [(n, vae[n].dtype, vae[n].shape, vae[n].exact_digest) for n in names]
    return {
        "id": _manifest_id("id", rounded),
        "exact_id": _manifest_id("exact", exact),
        "encoder_id": _manifest_id("encoder", [r for r in rounded if group_of(r[0]) == "encoder"]),
        "decoder_id": _manifest_id("decoder", [r for r in rounded if group_of(r[0]) == "decoder"]),
    }


def compute_identity(
    vae: CanonicalVae,
    read: Callable[[str], bytes | memoryview],
    *,
    read_into: Callable[[str, memoryview], bytes | memoryview] | None = None,
    with_stats: bool = False,
    workers: int | None = None,
    scratch_limit: int | None = None,
) -> tuple[VaeIdentity, dict[str, TensorStats]]:
    """Hash every canonical tensor of `vae` (reading it by its stored key) into a :class:`VaeIdentity`.

    `read_into` (a source's optional ``read_into``) lets each worker reuse one buffer. Memory stays bounded
    by the largest tensors in flight (one per worker), whatever the file size.

    A reused buffer is sized from the tensor's declared shape before its bytes are read, so it is only used
    for tensors of at most `scratch_limit` bytes (the file's size: stored bytes are never more); a larger
    one goes through `read`, where the reader checks the shape against what it holds before allocating.
    """
    infos = vae.tensors
    scratch = _Scratch()

    def work(name: str) -> _Digested:
        info = infos[name]
        key = vae.stored_key[name]
        fits = scratch_limit is None or info.nbytes <= scratch_limit
        raw = read_into(key, scratch.raw(info.nbytes)) if read_into is not None and fits else read(key)
        if len(raw) != info.nbytes:
            raise ValueError(f"tensor {key!r}: read {len(raw)} bytes, expected {info.nbytes}")
        return _digest_tensor(info, raw, with_stats, scratch)

    names = sorted(infos)
    pool_size = workers or min(4, os.cpu_count() or 1)
    if pool_size == 1 or sum(i.nbytes for i in infos.values()) < PARALLEL_MIN_BYTES:
        done = [work(name) for name in names]  # a pool costs more than it saves on a small VAE
    else:
        with ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="vaereg-hash") as pool:
            done = list(pool.map(work, names))
    digests = {
        d.name: TensorDigest(infos[d.name].dtype, infos[d.name].shape, d.digest, d.exact_digest) for d in done
    }
    ids = ids_from_digests(digests)
    sketch = np.concatenate([d.sketch for d in done]) if done else np.zeros(0, np.float32)
    identity = VaeIdentity(
        **ids,
        family=vae.family,
        latent_channels=vae.latent_channels,
        dtype=_storage_dtype(infos.values()),
        layout=vae.layout,
        prefix=vae.prefix,
        tensors=len(infos),
        params=sum(i.numel for i in infos.values()),
        tensor_digests=digests,
        sketch=sketch.astype("<f4").tobytes(),
    )
    stats = {d.name: d.stats for d in done if d.stats is not None}
    return identity, stats
