"""How far apart two VAEs' weights are, tensor by tensor (``vaereg diff``, docs/check.md).

`diff_models` first decides from the two files' headers whether the VAEs are compatible (`incompatibility`:
family, latent channels, canonical tensor shapes), reading no tensor. Compatible VAEs are then read once, a
tensor pair at a time - two pairs at once, in two threads, so that one reads while the other computes: each
tensor is digested as `compute_identity` digests it, and B's is measured against A's while both are in memory
(`identify_and_measure`). That gives both identities, the relation (`answers.relation`) and the per-group and
per-tensor differences that ``vaereg diff`` shows. A file the index holds unchanged is not digested: its
identity comes from the index; when both are, B's tensors that the digests say are A's are not read at all,
and each pair is read and measured a piece at a time while in the core's cache. The measuring itself -
||a||^2, ||b - a||^2, max |b - a| and, where the digests cannot tell, the precision rule, `CHUNK` values at a
time, through the compiled kernel or numpy - is `answers.measure`. Memory: the stored tensor pair of each
thread plus a few MB, never float64 copies of whole tensors.
"""

from __future__ import annotations

import math
import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from vaereg.answers.measure import KERNEL_DTYPES, Sums, chunks_of, kernel_sums, measure_with_kernel, measure_with_numpy
from vaereg.answers.relation import (
    GROUPS,
    digests_decide,
    incompatibility,
    relation,
    relative_gap,
)
from vaereg.identity.digest import (
    PARALLEL_MIN_BYTES,
    _digest_tensor,
    _Digested,
    _map_in_threads,
    _Scratch,
    assemble_identity,
    compute_identity,
    read_tensor,
)
from vaereg.identity.dtypes import DTYPE_BITS
from vaereg.identity.kernel import kernel
from vaereg.identity.locate import group_of
from vaereg.identity.report import TensorDigest, VaeIdentity

if TYPE_CHECKING:

    from vaereg.identity.analyze import OpenedModel
    from vaereg.plugin.manager import Plugins
    from vaereg.store.index import Index

#: How many of the most different tensors a diff lists.
TOP_TENSORS = 5

# --- full-tensor differences ------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorDiff:
    """How one canonical tensor of B differs from A's, from raw sums: ||a||, ||b - a|| and max |b - a|.

    NaN where a value is NaN on either side; `agrees` is the precision rule over every element.
    """

    name: str
    norm: float
    gap: float
    max_abs: float
    agrees: bool

    @property
    def group(self) -> str:
        return group_of(self.name)

    @property
    def differs(self) -> bool:
        return not (self.gap == 0 and self.max_abs == 0)

    @property
    def rel_l2(self) -> float:
        """||b - a|| / ||a||."""
        return relative_gap(self.gap, self.norm)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "rel_l2": _number(self.rel_l2), "max_abs": _number(self.max_abs)}


@dataclass(frozen=True)
class GroupDiff:
    """One tensor group (encoder, decoder, other): how many tensors differ and by how much overall."""

    group: str
    tensors: int
    differing: int
    rel_l2: float
    max_abs: float

    def to_json(self) -> dict[str, Any]:
        return {
            "tensors": self.tensors,
            "differing": self.differing,
            "rel_l2": _number(self.rel_l2),
            "max_abs": _number(self.max_abs),
        }


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None  # JSON has no NaN


def _same(da: TensorDigest, db: TensorDigest) -> bool:
    """Whether B's tensor is A's byte for byte (the same exact digest and stored dtype): then it is not read."""
    return da.exact_digest == db.exact_digest and da.dtype == db.dtype


def _tensor_diff(name: str, sums: Sums, decided: bool | None) -> TensorDiff:
    """The `TensorDiff` of a pair from its sums; the precision rule's verdict is the digests' where they decide."""
    norm2, gap2, biggest, agrees = sums
    return TensorDiff(name, math.sqrt(norm2), math.sqrt(gap2), biggest, agrees if decided is None else decided)


def _measure(name: str, da: Any, raw_a: bytes | memoryview, db: Any, raw_b: bytes | memoryview | None) -> TensorDiff:
    """One tensor pair, streamed: sums of squares and the largest difference, piece by piece. `raw_b` is
    None when the exact digests say B's tensor is A's."""
    decided = digests_decide(da, db) if raw_b is not None else True
    b_dtype = db.dtype if raw_b is not None else None
    through_kernel = kernel is not None and da.dtype in KERNEL_DTYPES and (b_dtype is None or b_dtype in KERNEL_DTYPES)
    measure = measure_with_kernel if through_kernel else measure_with_numpy
    return _tensor_diff(name, measure(name, da.dtype, raw_a, b_dtype, raw_b, decided is None), decided)


#: Tensor pairs worked on at once: while one thread reads a pair (the GIL released in pread), the other digests and
#: measures the previous one (released in the kernel). More would only add memory: the pass runs at memory speed.
WORKERS = 2


class _Unranged(Exception):
    """A source cannot read a range of this tensor (`read_range_into` gave None): read it whole."""


@dataclass(frozen=True)
class _PairDone:
    """What one canonical name gives in `identify_and_measure`: both tensors' digests and the difference, or
    the stage that failed (0: reading or digesting A's tensor, 1: B's, 2: measuring) and its exception."""

    a: _Digested | None = None
    b: _Digested | None = None
    diff: TensorDiff | None = None
    failure: tuple[int, Exception] | None = None


def identify_and_measure(
    ma: OpenedModel,
    mb: OpenedModel,
    workers: int | None = None,
    known: tuple[VaeIdentity | None, VaeIdentity | None] = (None, None),
) -> tuple[VaeIdentity, VaeIdentity, list[TensorDiff]]:
    """Both identities and the differences of two compatible opened VAEs, reading each file at most once.

    For each canonical name, on `workers` threads at once (by default `WORKERS`, one for a small VAE): read A's
    tensor and digest it as `compute_identity` does, the same for B's, and measure the pair while both are in
    memory - only ||a|| where the exact digests and dtypes say B's is A's. The identities are assembled as
    `compute_identity` assembles them: the same ids, digests and sketch. A side whose identity is `known` (from
    the index: `known_identity`) is not digested, and B's tensor is not even read where the digests say it is
    A's. Each thread reads into two buffers of its own, reused from tensor to tensor: memory stays at a stored
    tensor pair per thread (and, in the numpy path, a few chunks of float64, `CHUNK`), whatever the files' size.

    Raises what identifying A, then B, then measuring (each file read twice, as diff once did) raised first: the
    first failing tensor of A in name order, else of B, else the first failing measurement.
    """
    sides = [(m.vae, m.source.read, getattr(m.source, "read_into", None), _Scratch()) for m in (ma, mb)]

    def digest(side: int, name: str, read: bool = True) -> tuple[bytes | memoryview | None, _Digested | None, TensorDigest]:
        vae, read_from, read_into, scratch = sides[side]
        info = vae.tensors[name]
        raw = read_tensor(info.nbytes, vae.stored_key[name], read_from, read_into, scratch) if read else None
        if known[side] is not None:
            return raw, None, known[side].tensor_digests[name]  # type: ignore[union-attr]
        assert raw is not None
        got = _digest_tensor(info, raw, False, scratch)
        return raw, got, TensorDigest(info.dtype, info.shape, got.digest, got.exact_digest)

    ranged = kernel is not None and None not in known and all(hasattr(m.source, "read_range_into") for m in (ma, mb))

    def in_pieces(name: str, stage: list[int]) -> TensorDiff | None:
        """`_measure` of a pair whose digests the index gave, each side read CHUNK values at a time into its
        scratch buffer of this thread, measured while in the core's cache (the same sums as reading it whole:
        the same pieces); None when a dtype or a source's tensor does not allow it (then it is read whole)."""
        da, db = known[0].tensor_digests[name], known[1].tensor_digests[name]  # type: ignore[union-attr]
        if da.dtype not in KERNEL_DTYPES or db.dtype not in KERNEL_DTYPES:
            return None
        same = _same(da, db)
        decided = True if same else digests_decide(da, db)
        widths = DTYPE_BITS[da.dtype] // 8, DTYPE_BITS[db.dtype] // 8
        keys = ma.vae.stored_key[name], mb.vae.stored_key[name]
        reads = ma.source.read_range_into, mb.source.read_range_into

        def piece(side: int, start: int, stop: int) -> memoryview:
            stage[0] = side
            nbytes = (stop - start) * widths[side]
            got = reads[side](keys[side], start * widths[side], sides[side][3].raw(nbytes)[:nbytes])
            if got is None:
                raise _Unranged
            return got

        def pairs() -> Iterable[tuple[memoryview, memoryview | None]]:
            for start, stop in chunks_of(math.prod(da.shape)):
                yield piece(0, start, stop), None if same else piece(1, start, stop)
                stage[0] = 2

        try:
            return _tensor_diff(name, kernel_sums(pairs(), da.dtype, None if same else db.dtype, decided is None), decided)
        except _Unranged:
            return None

    def work(name: str) -> _PairDone:
        stage = 0
        try:
            if ranged:
                at = [0]
                try:
                    measured = in_pieces(name, at)
                except Exception:
                    stage = at[0]
                    raise
                if measured is not None:
                    return _PairDone(diff=measured)
            raw_a, got_a, da = digest(0, name)
            stage = 1
            if known[1] is not None:  # whether B's tensor is A's, told before reading it
                same = _same(da, known[1].tensor_digests[name])
                raw_b, got_b, db = digest(1, name, read=not same)
            else:
                raw_b, got_b, db = digest(1, name)
                same = _same(da, db)
            stage = 2
            assert raw_a is not None
            return _PairDone(got_a, got_b, _measure(name, da, raw_a, db, None if same else raw_b))
        except Exception as exc:  # noqa: BLE001 - raised below, the one reading each file twice met first
            return _PairDone(failure=(stage, exc))

    infos = ma.vae.tensors
    names = sorted(infos)
    if workers is None:
        stored = sum(math.prod(t.shape) * DTYPE_BITS.get(t.dtype, 8) // 8 for t in infos.values())
        workers = min(WORKERS, os.cpu_count() or 1) if stored >= PARALLEL_MIN_BYTES else 1
    done = _map_in_threads(work, names, workers)
    failures = [(d.failure[0], i, d.failure[1]) for i, d in enumerate(done) if d.failure is not None]
    if failures:
        raise min(failures, key=lambda f: f[:2])[2]
    va = known[0] or assemble_identity(ma.vae, [d.a for d in done])[0]  # type: ignore[misc]
    vb = known[1] or assemble_identity(mb.vae, [d.b for d in done])[0]  # type: ignore[misc]
    return va, vb, [d.diff for d in done]  # type: ignore[misc]


def known_identity(index: Index, path: Path, model: OpenedModel) -> VaeIdentity | None:
    """The identity of the VAE in `path` as the index holds it, when the file is unchanged since
    (`store.answer.indexed_model`) and its canonical tensors are the ones `model`'s header gives (the same
    names, dtypes and shapes: the same plugins canonicalised it); else None, and it is read."""
    from vaereg.store.answer import indexed_model

    found = indexed_model(index, path, with_stats=False)
    vae = found[0].vae if found is not None else None
    if vae is None or model.vae is None:
        return None
    held = {name: (t.dtype, tuple(t.shape)) for name, t in vae.tensor_digests.items()}
    opened = {name: (t.dtype, tuple(t.shape)) for name, t in model.vae.tensors.items()}
    return vae if held == opened else None


def group_differences(diffs: Iterable[TensorDiff]) -> list[GroupDiff]:
    """Per-tensor differences summed by group (relative L2 over the whole group)."""
    out = []
    diffs = list(diffs)
    for group in GROUPS:
        members = [d for d in diffs if d.group == group]
        if not members:
            continue
        gap = math.sqrt(sum(d.gap**2 for d in members))
        norm = math.sqrt(sum(d.norm**2 for d in members))
        differing = sum(1 for d in members if d.differs)
        biggest = [d.max_abs for d in members]
        max_abs = math.nan if any(map(math.isnan, biggest)) else max(biggest)  # max() skips NaN by order
        out.append(GroupDiff(group, len(members), differing, relative_gap(gap, norm), max_abs))
    return out


# --- diffing two files --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiffReport:
    """What ``vaereg diff A B`` says: the relation, and for compatible VAEs the measured differences."""

    a: str
    b: str
    relation: str | None = None
    reason: str | None = None
    error: str | None = None
    vae_a: VaeIdentity | None = None
    vae_b: VaeIdentity | None = None
    groups: tuple[GroupDiff, ...] = ()
    tensors: tuple[TensorDiff, ...] = field(default=(), repr=False)

    @property
    def top(self) -> list[TensorDiff]:
        """The tensors that differ most, those with NaNs first."""
        differing = [t for t in self.tensors if t.differs]
        return sorted(differing, key=lambda t: -t.rel_l2 if not math.isnan(t.rel_l2) else -math.inf)[:TOP_TENSORS]

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "relation": self.relation,
            "reason": self.reason,
            "error": self.error,
            "vae_a": self.vae_a.to_json() if self.vae_a else None,
            "vae_b": self.vae_b.to_json() if self.vae_b else None,
            "groups": {g.group: g.to_json() for g in self.groups},
            "top": [t.to_json() for t in self.top],
        }


def diff_models(
    path_a: Path, path_b: Path, plugins: Plugins, *, index: Index | None = None, rehash: bool = False
) -> DiffReport:
    """Identify the VAEs of two model files and compare them; every failure becomes `error`.

    Compatibility is decided from the headers, before any tensor is read. Compatible VAEs are then read once,
    a tensor pair per worker thread at a time, for both identities and the differences
    (`identify_and_measure`); for incompatible ones only the identities are computed, as `vaereg hash` does.
    The identity of a file `index` holds unchanged comes from the index (not with `rehash`): its tensors are
    still read to be measured, except B's where the digests say they are A's.
    """
    from vaereg.errors import FileProblem
    from vaereg.identity.analyze import open_model

    shown = (str(path_a), str(path_b))
    with ExitStack() as stack:
        models = []
        for path in (path_a, path_b):
            try:
                model = stack.enter_context(open_model(path, plugins))
            except FileProblem as exc:
                return DiffReport(*shown, error=f"{path}: {exc}")
            except OSError as exc:
                from vaereg._fs import os_error_text

                return DiffReport(*shown, error=f"{path}: {os_error_text(exc)}")
            if model.vae is None:
                return DiffReport(*shown, error=f"{path}: holds no VAE")
            models.append(model)
        ma, mb = models
        why = incompatibility(ma.vae, mb.vae)
        known = (None, None)
        if index is not None and not rehash:
            known = (known_identity(index, path_a, ma), known_identity(index, path_b, mb))
        try:
            if why:
                va, vb = (
                    k or compute_identity(m.vae, m.source.read, read_into=getattr(m.source, "read_into", None))[0]
                    for k, m in zip(known, models)
                )
                return DiffReport(*shown, relation="incompatible", reason=why, vae_a=va, vae_b=vb)
            va, vb, diffs = identify_and_measure(ma, mb, known=known)
        except (FileProblem, OSError, ValueError, KeyError) as exc:  # data contradicting its header
            return DiffReport(*shown, error=f"unreadable: {exc}")
    return DiffReport(
        *shown,
        relation=relation(va, vb, {d.name: d.agrees for d in diffs}),
        vae_a=va,
        vae_b=vb,
        groups=tuple(group_differences(diffs)),
        tensors=tuple(diffs),
    )
