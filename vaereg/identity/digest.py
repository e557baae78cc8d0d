"""Canonical VAE identities from tensors (docs/identity-spec.md).

Each canonical tensor gets two xxh3-128 digests: over its values rounded to fp16 (floats) and over its
stored values. The ids are digests of sorted manifests of those per-tensor digests, so `encoder_id`,
`decoder_id` and later tensor-level comparisons cost nothing beyond one pass over the VAE's tensors.
Tensors are hashed in a small thread pool: numpy's casts, xxhash and the fp16 kernel release the GIL.
With the compiled kernel (identity/fp16.py) a tensor is hashed, rounded and counted a piece at a time, so its
bytes come from memory once and the piece stays in the core's cache for the other passes.
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

import xxhash

from vaereg.identity.dtypes import FLOAT_DTYPES, PACKED_FLOATS
from vaereg.identity.kernel import kernel
from vaereg.identity.locate import CanonicalVae, group_of
from vaereg.identity.report import TensorDigest, TensorStats, VaeIdentity
from vaereg.plugin.types import TensorInfo

#: The manifests' format, hashed into every id. Spec v2 (report.SPEC_VERSION) did not change it, so the VAEs
#: whose canonical tensors did not change kept their ids.
MANIFEST_VERSION = 1
#: Values sampled per tensor for the linear sketch.
SKETCH_PER_TENSOR = 32
#: Below this many bytes of tensors, hashing in one thread is faster than starting a pool.
PARALLEL_MIN_BYTES = 16 << 20
#: Stored bytes per piece in the kernel's pass: small enough to stay in a core's L2 cache between passes.
PIECE_BYTES = 256 << 10
#: The kernel's rounding function per stored dtype, and the stored bytes per value.
_KERNEL_ROUND = {"F32": ("round_f32", 4), "BF16": ("round_bf16", 2)}


class _Scratch(threading.local):
    """Per-thread buffers reused from tensor to tensor.

    Fresh memory for every tensor means faulting in hundreds of megabytes of new pages per VAE, which costs
    more than reading and converting the values.
    """

    def __init__(self) -> None:
        self._raw = bytearray()
        self._piece: memoryview | None = None

    def raw(self, nbytes: int) -> memoryview:
        if len(self._raw) < nbytes:
            self._raw = bytearray(nbytes)
        return memoryview(self._raw)

    def piece(self) -> memoryview:
        """Room for one piece's fp16 values (the kernel's pass)."""
        if self._piece is None:
            self._piece = memoryview(bytearray(PIECE_BYTES))
        return self._piece


@lru_cache(maxsize=8192)  # the same names and sizes recur in every VAE of a family
def _positions(name: str, numel: int) -> tuple[int, ...]:
    """Seeded sample positions: a function of the canonical name and size only, so they line up across VAEs."""
    count = min(numel, SKETCH_PER_TENSOR)
    return tuple(xxhash.xxh64_intdigest(f"{name}#{i}".encode()) % numel for i in range(count))


@dataclass(frozen=True)
class _Digested:
    name: str
    digest: str
    exact_digest: str
    sketch: bytes  # float32, little-endian
    stats: TensorStats | None


_HALF = struct.Struct("<e")
_SINGLE = struct.Struct("<f")


def _half_as_single(raw: bytes | memoryview) -> bytes:
    """An fp16 value widened exactly to float32 bytes; a NaN keeps its payload bits (as numpy widens it)."""
    (bits,) = struct.unpack("<H", raw)
    if bits & 0x7C00 == 0x7C00 and bits & 0x03FF:
        return (((bits & 0x8000) << 16) | 0x7F800000 | ((bits & 0x03FF) << 13)).to_bytes(4, "little")
    return _SINGLE.pack(_HALF.unpack(raw)[0])


def _sample(dtype: str, raw: bytes | memoryview, name: str) -> bytes:
    """The sketch's values of one stored F32/BF16/F16 tensor as float32 bytes, read at the sample positions
    only (exact widening: bfloat16 is a float32's top half)."""
    if dtype == "F32":
        return b"".join(raw[4 * p : 4 * p + 4] for p in _positions(name, len(raw) // 4))
    if dtype == "BF16":
        return b"".join(b"\0\0" + raw[2 * p : 2 * p + 2] for p in _positions(name, len(raw) // 2))
    return b"".join(_half_as_single(raw[2 * p : 2 * p + 2]) for p in _positions(name, len(raw) // 2))


def _digest_with_kernel(info: TensorInfo, raw: bytes | memoryview, with_stats: bool, scratch: _Scratch) -> _Digested:
    """`_digest_tensor` for F32, BF16 and F16 through the compiled kernel: one pass over the bytes, a piece at a
    time (the same digests: xxh3 streams to the value it gives in one call)."""
    stored = memoryview(raw).cast("B")
    exact = xxhash.xxh3_128()
    rounding = _KERNEL_ROUND.get(info.dtype)
    rounded = xxhash.xxh3_128() if rounding is not None else None
    round_piece, width = (getattr(kernel, rounding[0]), rounding[1]) if rounding is not None else (None, 0)
    out = scratch.piece()
    nonfinite, nonzero = 0, False
    for start in range(0, len(stored), PIECE_BYTES):
        piece = stored[start : start + PIECE_BYTES]
        exact.update(piece)
        if round_piece is not None:
            found, anything = round_piece(piece, out)
            rounded.update(out[: len(piece) // width * 2])
        elif with_stats:
            found, anything = kernel.count_f16(piece)
        else:
            continue
        nonfinite += found
        nonzero = nonzero or anything
    exact_digest = exact.hexdigest()
    digest = rounded.hexdigest() if rounded is not None else exact_digest
    stats = TensorStats(nonfinite=nonfinite, all_zero=not nonzero) if with_stats else None
    return _Digested(info.name, digest, exact_digest, _sample(info.dtype, stored, info.name), stats)


def _digest_tensor(
    info: TensorInfo, raw: bytes | memoryview, with_stats: bool, scratch: _Scratch | None = None
) -> _Digested:
    if kernel is not None and (info.dtype in _KERNEL_ROUND or info.dtype == "F16"):
        return _digest_with_kernel(info, raw, with_stats, scratch if scratch is not None else _Scratch())
    # numpy: dtypes the kernel does not take, or no kernel
    from vaereg.identity.values import digest_values

    numel = info.numel
    positions = _positions(info.name, numel) if numel else ()
    digest, exact, sketch, stats = digest_values(info.dtype, raw, positions, with_stats)
    return _Digested(info.name, digest, exact, sketch, TensorStats(*stats) if stats is not None else None)


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


_Result = TypeVar("_Result")


def _map_in_threads(work: Callable[[str], _Result], names: list[str], threads: int) -> list[_Result]:
    """`[work(n) for n in names]` on `threads` threads (this one among them), results in order. Every name is
    worked on and the first failure in `names` order is raised (`ThreadPoolExecutor.map` raises the same one
    but cancels what had not started); Ctrl-C stops the others after their tensor."""
    results: list[_Result | None] = [None] * len(names)
    failures: dict[int, Exception] = {}
    todo = iter(enumerate(names))
    lock = threading.Lock()
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            with lock:
                step = next(todo, None)
            if step is None:
                return
            try:
                results[step[0]] = work(step[1])
            except Exception as exc:  # noqa: BLE001 - re-raised below, in the caller's thread
                failures[step[0]] = exc

    helpers = [threading.Thread(target=run, name=f"vaereg-hash-{n}", daemon=True) for n in range(threads - 1)]
    for helper in helpers:
        helper.start()
    try:
        run()
    except BaseException:  # Ctrl-C in this thread: the helpers finish their tensor and stop
        stop.set()
        raise
    finally:
        for helper in helpers:
            helper.join()
    if failures:
        raise failures[min(failures)]
    return results  # type: ignore[return-value]  # every slot is filled when nothing failed


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
        fits = scratch_limit is None or info.nbytes <= scratch_limit
        raw = read_tensor(info.nbytes, vae.stored_key[name], read, read_into, scratch if fits else None)
        return _digest_tensor(info, raw, with_stats, scratch)

    names = sorted(infos)
    pool_size = workers or min(4, os.cpu_count() or 1)
    if pool_size == 1 or sum(i.nbytes for i in infos.values()) < PARALLEL_MIN_BYTES:
        done = [work(name) for name in names]  # a pool costs more than it saves on a small VAE
    else:
        done = _map_in_threads(work, names, pool_size)
    return assemble_identity(vae, done)


def read_tensor(
    nbytes: int,
    key: str,
    read: Callable[[str], bytes | memoryview],
    read_into: Callable[[str, memoryview], bytes | memoryview] | None,
    scratch: _Scratch | None,
) -> bytes | memoryview:
    """The stored bytes of tensor `key`: into `scratch`'s buffer of this thread when there is one and the source
    can (`read_into`), else through `read`. ValueError when the source gives other than the header's `nbytes`."""
    raw = read_into(key, scratch.raw(nbytes)) if read_into is not None and scratch is not None else read(key)
    if len(raw) != nbytes:
        raise ValueError(f"tensor {key!r}: read {len(raw)} bytes, expected {nbytes}")
    return raw


def assemble_identity(vae: CanonicalVae, done: Sequence[_Digested]) -> tuple[VaeIdentity, dict[str, TensorStats]]:
    """The :class:`VaeIdentity` of `vae`, and the health stats where they were counted, from its tensors'
    `_digest_tensor` results: one per canonical tensor, in sorted name order (the sketch's)."""
    infos = vae.tensors
    digests = {
        d.name: TensorDigest(infos[d.name].dtype, infos[d.name].shape, d.digest, d.exact_digest) for d in done
    }
    ids = ids_from_digests(digests)
    sketch = b"".join(d.sketch for d in done)
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
        sketch=sketch,
    )
    stats = {d.name: d.stats for d in done if d.stats is not None}
    return identity, stats
