"""The VAEs ``check`` compares a model's own VAE with: the registry's entries and the index's identities.

`KnownVaes` gathers them once per check (by canonical id, the checked model left out), names them through
one catalog, and says how each relates to a VAE, and which blend of them makes it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vaereg.answers.blend import BlendFit, Sketch, explain
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

if TYPE_CHECKING:
    from vaereg.store.catalog import Catalog
    from vaereg.store.index import Index, IndexedFile
    from vaereg.store.registry.read import Registry
    from vaereg.store.registry.schema import Entry


@dataclass(frozen=True)
class KnownVae:
    """A known VAE as check names it: its id, registry name and the paths of its standalone copies."""

    id: str
    name: str | None
    paths: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.name or (Path(self.paths[0]).name if self.paths else f"VAE {self.id[:12]}")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "paths": list(self.paths)}


def same_file(a: str | Path, b: str | Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b) or Path(a).resolve() == Path(b).resolve()


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
    _catalog: Catalog | None = field(default=None, repr=False, compare=False)

    @classmethod
    def gather(cls, vae: VaeIdentity, *, own_path: Path, index: Index | None, registry: Registry | None) -> KnownVaes:
        known = cls(registry, index)
        if index is not None:
            known._from_index(vae, own_path, index)
        if registry is not None:
            for entry in registry.entries.values():
                if entry.id and entry.family in (None, vae.family):
                    known.entries.setdefault(entry.id, []).append(entry)
        return known

    def _from_index(self, vae: VaeIdentity, own_path: Path, index: Index) -> None:

        for vae_id, exact_id, sketch in index.sketches(vae.family):
            if vae_id not in self.copies:
                self.copies[vae_id] = [c for c in index.copies(vae_id) if not same_file(c.path, own_path)]
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
        entry = self.entry(vae_id)
        return entry.name if entry else None

    def flags(self, vae_id: str) -> tuple[str, ...]:
        entry = self.entry(vae_id)
        return entry.flags if entry else ()

    def paths(self, vae_id: str) -> tuple[str, ...]:
        return tuple(c.path for c in self.copies.get(vae_id, ()) if not c.embedded)

    def vae(self, vae_id: str) -> KnownVae:
        return KnownVae(vae_id, self.name(vae_id), self.paths(vae_id))

    def healthy(self, vae_id: str) -> bool:
        """No flag that makes it unfit, and no NaN/Inf among its sampled values."""
        if any(flag in FLAG_PROBLEMS for flag in self.flags(vae_id)):
            return False
        return all(np.isfinite(sketch_values(v)).all() for v in self.variants.get(vae_id, ()))

    # relations

    def relations(self, vae: VaeIdentity) -> dict[str, tuple[str, float]]:
        """id -> (closest relation, sketch distance) of each known VAE related to `vae` at all."""
        found: dict[str, tuple[str, float]] = {}
        for vae_id, variants in self.variants.items():
            scored = []
            for i, v in enumerate(variants):
                if ids_decide(vae, v):
                    kind = relation_from_ids(vae, v.id, v.encoder_id, v.decoder_id)
                else:
                    v = variants[i] = self._detailed(v)
                    kind = relation(vae, v)
                    if kind == "incompatible":  # e.g. a tensor missing: an intact half may still be shared
                        kind = relation_from_ids(vae, v.id, v.encoder_id, v.decoder_id)
                scored.append((kind, sketch_distance(vae, v)))
            best = min(scored, key=lambda rd: (relation_rank(rd[0]), rd[1]))
            if best[0] in RELATION_ORDER:
                found[vae_id] = best
        # Registry entries with ids but no indexed copy: only the ids can tell.
        for vae_id, entries in self.entries.items():
            kinds = [relation_from_ids(vae, vae_id, e.encoder_id, e.decoder_id) for e in entries]
            best_kind = min(kinds, key=relation_rank, default="different")
            if vae_id not in found and best_kind in RELATION_ORDER:
                found[vae_id] = (best_kind, 0.0 if best_kind == "same" else math.inf)
        return found

    def blend(self, vae: VaeIdentity) -> BlendFit | None:
        """The smallest weighted sum of known sketches giving `vae`'s sketch, if one fits."""
        candidates = []
        for variants in self.variants.values():
            # Sketches of other shapes can have the same length (32 samples a tensor) but never line up.
            variants = [v for v in variants if (v.tensors, v.params) == (vae.tensors, vae.params)]
            if not variants:
                continue
            best = min(variants, key=lambda v: precision_rank(v.dtype))
            # Per-sample dtypes matter only for a VAE stored in several dtypes.
            candidates.append(Sketch.of(self._detailed(best) if best.dtype == "mixed" else best))
        return explain(Sketch.of(vae), candidates) if candidates else None
