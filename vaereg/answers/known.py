"""The VAEs ``check`` compares a model's own VAE with: the registry's entries and the index's standalone VAEs.

`KnownVaes` gathers them once per check (by canonical id, the checked model left out), names them through
one catalog, and says how each relates to a VAE, and which blend of them makes it. Three rules shape what
counts as a known VAE (docs/check.md):

- **evidence**: a VAE is known when a standalone file holds it or the registry names it. A VAE found only
  inside checkpoints proves nothing (a merged checkpoint and its pruned copy share one merged VAE); it is
  shown as "also embedded in", never compared with;
- **one VAE per set of precision variants**: an fp32 file and its bf16 copy have two ids but are one VAE,
  named by the registry and loaded from its most precise standalone copy;
- **no merges**: a known VAE that is itself a blend of other known VAEs is neither a component nor a
  recommendation.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from vaereg._fs import inside_any
from vaereg.answers.health import FLAG_PROBLEMS
from vaereg.answers.relation import (
    RELATION_ORDER,
    ids_decide,
    relation,
    relation_from_ids,
    relation_rank,
    sketch_distance,
    sketch_values,
)
from vaereg.identity.dtypes import precision_rank
from vaereg.identity.report import VaeIdentity
from vaereg.store.rows import fold64

if TYPE_CHECKING:
    from vaereg.answers.blend import BlendFit, Pool, Sketch
    from vaereg.store.catalog import Catalog
    from vaereg.store.index import Index, IndexedFile
    from vaereg.store.registry.read import Registry
    from vaereg.store.registry.schema import Entry

#: Sketches further apart than this (relative L2) are never precision variants: fp8 rounding moves a sketch
#: by about 3%, bf16 by 0.2%.
_VARIANT_DISTANCE = 0.1


@dataclass(frozen=True)
class KnownVae:
    """A known VAE as check names it: its id, registry name, the paths of its standalone copies (the ones a
    launcher reads first, then the most precise first) and the registry's source to download it from."""

    id: str
    name: str | None
    paths: tuple[str, ...] = ()
    source: str | None = None

    @property
    def label(self) -> str:
        from vaereg.files.names import (
            model_name,  # a diffusers folder by its name, not its weights file's
        )

        return self.name or (model_name(self.paths[0]) if self.paths else f"VAE {self.id[:12]}")

    @property
    def loadable(self) -> bool:
        """A file to load, or a source to download it from."""
        return bool(self.paths or self.source)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "paths": list(self.paths), "source": self.source}


def _shape(v: VaeIdentity) -> tuple[int, int, int]:
    """What VAEs must share for their sketches to line up: tensor count, parameters, samples."""
    return (v.tensors, v.params, len(v.sketch) // 4)


def same_file(a: str | Path, b: str | Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b) or Path(a).resolve() == Path(b).resolve()


class _SameFile:
    """`same_file(path, row.path)` for one path against many index rows: a row of another inode cannot be
    the file (no symlink resolving for it; the device is not asked: it may change between mounts), the rest
    are compared as `same_file` does."""

    def __init__(self, path: str | Path) -> None:
        self.absolute = os.path.abspath(path)
        self.resolved = os.path.realpath(path)
        try:
            self.inode: int | None = fold64(os.stat(path).st_ino)  # as the index keeps it
        except OSError:
            self.inode = None

    def is_(self, row: IndexedFile) -> bool:
        if os.path.abspath(row.path) == self.absolute:
            return True
        if self.inode is not None and row.inode != self.inode:
            return False
        return os.path.realpath(row.path) == self.resolved


@dataclass
class KnownVaes:
    """The VAEs the registry and the index know, other than the model being checked, by canonical id."""

    registry: Registry | None
    index: Index | None = None
    #: id -> exact variants from the index, with sketches; per-tensor digests are read when needed
    variants: dict[str, list[VaeIdentity]] = field(default_factory=dict)
    #: id -> indexed files holding it (standalone or embedded), the checked model left out
    copies: dict[str, list[IndexedFile]] = field(default_factory=dict)
    #: id -> registry entries with that id, of the family (known even without an indexed copy)
    entries: dict[str, list[Entry]] = field(default_factory=dict)
    #: the VAE folders the user's launchers read: copies there are listed first
    launcher_vae_folders: tuple[Path, ...] = ()
    _catalog: Catalog | None = field(default=None, repr=False, compare=False)
    _groups: dict[str, str] | None = field(default=None, repr=False, compare=False)
    _pools: dict[tuple[int, int, int], Pool] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def gather(
        cls,
        vae: VaeIdentity,
        *,
        own_path: Path,
        index: Index | None,
        registry: Registry | None,
        launcher_vae_folders: Sequence[Path] = (),
    ) -> KnownVaes:
        known = cls(registry, index, launcher_vae_folders=tuple(launcher_vae_folders))
        if index is not None:
            known._from_index(vae, own_path, index)
        if registry is not None:
            for entry in registry.entries.values():
                if entry.id and entry.family in (None, vae.family):
                    known.entries.setdefault(entry.id, []).append(entry)
        return known

    def _from_index(self, vae: VaeIdentity, own_path: Path, index: Index) -> None:
        own = _SameFile(own_path)
        if vae.id not in self.copies:  # where else the checked VAE is, even when it is not of the family
            self.copies[vae.id] = [c for c in index.copies(vae.id) if not own.is_(c)]
        for vae_id, exact_id, sketch in index.sketches(vae.family):
            if vae_id not in self.copies:
                self.copies[vae_id] = [c for c in index.copies(vae_id) if not own.is_(c)]
            held = [c for c in self.copies[vae_id] if c.exact_id == exact_id]
            if not held:
                continue  # only the checked model holds it: not a VAE known from elsewhere
            # The row's identity as the index keeps it; per-tensor digests follow when needed (`_detailed`).
            identity = held[0].report().vae
            assert identity is not None
            self.variants.setdefault(vae_id, []).append(replace(identity, sketch=sketch))

    def _detailed(self, v: VaeIdentity) -> VaeIdentity:
        """`v` with its per-tensor digests, read from the index."""
        if v.tensor_digests or self.index is None:
            return v
        return replace(v, tensor_digests=self.index.tensor_digests(v.exact_id))

    # naming

    def entry(self, vae_id: str) -> Entry | None:
        """The registry entry of `vae_id`, by the catalog's rule: by id, else through a copy's SHA-256."""
        if self.registry is None:
            return None
        if self.index is None:  # no copies to go by: the ids are all there is
            return next(iter(self.registry.find_by_id(vae_id)), None)
        if self._catalog is None:  # one catalog for the whole check, not one per name
            from vaereg.store.catalog import Catalog

            self._catalog = Catalog(self.index, self.registry)
        return self._catalog.entry_for(vae_id, self.copies.get(vae_id, []))

    def name(self, vae_id: str) -> str | None:
        """The registry's name for `vae_id`, else for one of its precision variants."""
        for member in self.members(vae_id):
            entry = self.entry(member)
            if entry is not None and entry.name:
                return entry.name
        return None

    def flags(self, vae_id: str) -> tuple[str, ...]:
        entry = self.entry(vae_id)
        return entry.flags if entry else ()

    def bases(self, vae_id: str) -> set[str]:
        """The base models known for `vae_id`: its registry entry's, and those of the indexed checkpoints
        that embed it or a VAE with one of its encoders."""
        found: set[str] = set()
        for member in self.members(vae_id):  # its precision variants are the same latent space
            entry = self.entry(member)
            if entry is not None and entry.base:
                found.add(entry.base)
            if self.index is not None:
                found |= self.index.bases(id=member)
        if self.index is not None:
            for encoder_id in self.encoder_ids(vae_id):
                found |= self.index.bases(encoder_id=encoder_id)
        return found

    def encoder_ids(self, vae_id: str) -> set[str]:
        """The encoder ids known for `vae_id` and its precision variants (their exact variants', their
        registry entries')."""
        found: set[str] = set()
        for member in self.members(vae_id):
            found |= {v.encoder_id for v in self.variants.get(member, ())}
            found |= {e.encoder_id for e in self.entries.get(member, ()) if e.encoder_id}
        return found

    def standalone(self, vae_id: str) -> list[IndexedFile]:
        return [c for c in self.copies.get(vae_id, ()) if not c.embedded]

    def embedded_in(self, vae_id: str) -> tuple[str, ...]:
        """The other checkpoints holding `vae_id` as their VAE."""
        return tuple(c.path for c in self.copies.get(vae_id, ()) if c.embedded)

    def paths(self, vae_id: str) -> tuple[str, ...]:
        """Standalone copies of the VAE and its precision variants: in a launcher's VAE folder first, then
        the most precise first."""
        found = [c for member in self.members(vae_id) for c in self.standalone(member)]
        found.sort(
            key=lambda c: (not inside_any(c.path, self.launcher_vae_folders), precision_rank(c.dtype), c.path)
        )
        return tuple(dict.fromkeys(c.path for c in found))

    def source(self, vae_id: str) -> str | None:
        """Where the registry says the VAE (or one of its precision variants) can be downloaded."""
        for member in self.members(vae_id):
            entry = self.entry(member)
            if entry is not None:
                source = entry.source or next((f.source for f in entry.files if f.source), None)
                if source:
                    return source
        return None

    def vae(self, vae_id: str) -> KnownVae:
        group = self.group_of(vae_id)
        return KnownVae(group, self.name(group), self.paths(group), self.source(group))

    def healthy(self, vae_id: str) -> bool:
        """No flag that makes it unfit, and no NaN/Inf among its sampled values."""
        for member in self.members(vae_id):
            if any(flag in FLAG_PROBLEMS for flag in self.flags(member)):
                return False
        import numpy as np

        return all(
            np.isfinite(sketch_values(v)).all() for m in self.members(vae_id) for v in self.variants.get(m, ())
        )

    # what counts as known

    def evidence(self, vae_id: str) -> bool:
        """Whether `vae_id` is known by itself: a standalone file holds it, or the registry names it."""
        return bool(self.standalone(vae_id)) or vae_id in self.entries or self.entry(vae_id) is not None

    def group_of(self, vae_id: str) -> str:
        """The id standing for `vae_id` and its precision variants: the most precise one's."""
        return self._grouping().get(vae_id, vae_id)

    def members(self, vae_id: str) -> list[str]:
        """`vae_id`'s group: the ids of its precision variants, the representative first."""
        group = self.group_of(vae_id)
        return [group] + sorted(i for i, g in self._grouping().items() if g == group and i != group)

    def is_blend(self, vae_id: str) -> bool:
        """Whether the known VAE is itself a merge of other known VAEs (of its shapes). Asked only of the
        VAEs an answer would use: a handful, each one solve (`blend.Pool`)."""
        head = self.group_of(vae_id)
        if head not in self.variants:
            return False  # a registry entry with no indexed copy: no sketch to tell
        return self._pool_by_shape()[_shape(self._best(head))].is_blend(head)

    def _best(self, vae_id: str) -> VaeIdentity:
        return min(self.variants[vae_id], key=lambda v: (precision_rank(v.dtype), v.exact_id))

    def _grouping(self) -> dict[str, str]:
        """id -> representative id, over the indexed VAEs that are known by themselves."""
        if self._groups is not None:
            return self._groups
        ids = sorted(i for i in self.variants if self.evidence(i))
        parent = {i: i for i in ids}

        def root(i: str) -> str:
            while parent[i] != i:
                i = parent[i]
            return i

        for a, b in combinations(ids, 2):
            if root(a) == root(b):
                continue
            va, vb = self._best(a), self._best(b)
            if (va.family, va.tensors, va.params) != (vb.family, vb.tensors, vb.params):
                continue
            if va.dtype == vb.dtype and ids_decide(va, vb):
                continue  # one precision throughout and other ids: other weights
            if sketch_distance(va, vb) > _VARIANT_DISTANCE:
                continue
            if relation(self._detailed(va), self._detailed(vb)) == "precision-variant":
                parent[root(b)] = root(a)
        members: dict[str, list[str]] = {}
        for i in ids:
            members.setdefault(root(i), []).append(i)
        self._groups = {}
        for group in members.values():
            head = min(group, key=lambda i: (precision_rank(self._best(i).dtype), not self.entry(i), i))
            self._groups.update({i: head for i in group})
        return self._groups

    def _candidates(self, like: VaeIdentity | None = None) -> dict[str, Sketch]:
        """One sketch per group (its most precise variant), of `like`'s shapes when given."""
        from vaereg.answers.blend import Sketch

        out: dict[str, Sketch] = {}
        for vae_id, head in self._grouping().items():
            if head in out or vae_id != head:
                continue
            best = self._best(head)
            if like is not None and (best.tensors, best.params) != (like.tensors, like.params):
                continue
            # Per-sample dtypes matter only for a VAE stored in several dtypes.
            out[head] = Sketch.of(self._detailed(best) if best.dtype == "mixed" else best)
        return out

    def _pool_by_shape(self) -> dict[tuple[int, int, int], Pool]:
        """One pool per set of shapes, of one sketch per group."""
        from vaereg.answers.blend import Pool

        if self._pools is None:
            by_shape: dict[tuple[int, int, int], list[Sketch]] = {}
            for head, sketch in self._candidates().items():
                by_shape.setdefault(_shape(self._best(head)), []).append(sketch)
            self._pools = {shape: Pool(sketches) for shape, sketches in by_shape.items()}
        return self._pools

    # relations

    def relations(self, vae: VaeIdentity) -> dict[str, tuple[str, float]]:
        """group id -> (closest relation, sketch distance) of each known VAE related to `vae` at all.

        Merges among the known VAEs are left out: being "the same as a merge" says nothing of what it is.
        """
        found: dict[str, tuple[str, float]] = {}
        for vae_id, head in self._grouping().items():
            variants = self.variants[vae_id]
            scored = []
            for i, v in enumerate(variants):
                if ids_decide(vae, v):
                    kind = relation_from_ids(vae, v.id, v.encoder_id, v.decoder_id)
                else:
                    v = variants[i] = self._detailed(v)
                    kind = relation(vae, v)
                    if kind == "incompatible":  # e.g. a tensor missing: an intact half may still be shared
                        kind = relation_from_ids(vae, v.id, v.encoder_id, v.decoder_id)
                if kind == "same" and vae_id != head:
                    kind = "precision-variant"  # the same as the bf16 copy of a VAE is a variant of that VAE
                scored.append((kind, sketch_distance(vae, v)))
            best = min(scored, key=lambda rd: (relation_rank(rd[0]), rd[1]))
            if best[0] in RELATION_ORDER:
                if head not in found or (relation_rank(best[0]), best[1]) < (
                    relation_rank(found[head][0]),
                    found[head][1],
                ):
                    found[head] = best
        # Registry entries with ids but no indexed copy: only the ids can tell.
        for vae_id, entries in self.entries.items():
            kinds = [relation_from_ids(vae, vae_id, e.encoder_id, e.decoder_id) for e in entries]
            best_kind = min(kinds, key=relation_rank, default="different")
            head = self.group_of(vae_id)
            if head not in found and best_kind in RELATION_ORDER:
                found[head] = (best_kind, 0.0 if best_kind == "same" else math.inf)
        return {head: found[head] for head in found if not self.is_blend(head)}

    def blend(self, vae: VaeIdentity) -> BlendFit | None:
        """The smallest weighted sum of known sketches giving `vae`'s sketch, if one fits.

        The components are known VAEs that are not merges themselves, one per set of precision variants.
        """
        from vaereg.answers.blend import Sketch

        target = Sketch.of(vae)
        pool = self._pool_by_shape().get(_shape(vae))
        if pool is None:
            return None
        left_out = {self.group_of(vae.id)}
        # Fit, then drop any component that is itself a merge and fit again: only the parts are asked.
        while len(left_out) <= len(pool.sketches):
            fit = pool.explain(target, left_out)
            merges = {p.id for p in fit.parts if self.is_blend(p.id)} if fit is not None else set()
            if not merges:
                return fit
            left_out |= merges
        return None
