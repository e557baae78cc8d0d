"""``vaereg check MODEL``: is the model's own VAE fit to use, or does it need an external one?

One pass over the embedded VAE's tensors gives its identity, sketch and health stats. The known VAEs - the
registry's entries and the index's identities, other than the model itself - then say what it is: the same
as one of them, a precision variant, one with the same encoder or decoder, a blend of several (`blend`), or
unknown. The verdict asks for an external VAE when there is no VAE, an unhealthy one, or a blend, and
recommends the healthy known VAE the embedded one is closest to or made from, with its standalone copies.
Nothing here writes: the index and registry are only read.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from vaereg.blend import BlendFit, Sketch, explain
from vaereg.compare import ids_decide, relation, relation_from_ids, sketch_distance, sketch_values
from vaereg.health import FLAG_PROBLEMS, Health, assess
from vaereg.records import VaeIdentity

if TYPE_CHECKING:
    from vaereg.index import Index, IndexedFile
    from vaereg.plugins import Plugins
    from vaereg.registry import Entry, Registry
    from vaereg.types import LauncherFolders

#: Launchers whose "Automatic" VAE setting loads a VAE file named after the checkpoint.
AUTOMATIC_VAE_LAUNCHERS = ("a1111", "forge", "reforge")

#: Relations to known VAEs, the most telling first; "blend" ranks above sharing one half.
RELATION_ORDER = ("same", "precision-variant", "blend", "same-encoder", "same-decoder")

#: Of several exact variants of one id, the sketch of the most precise stands for it in blend fits.
_PRECISION_RANK = {"F64": 0, "F32": 1, "F16": 2, "BF16": 3, "F8_E4M3": 4, "F8_E5M2": 5}


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


@dataclass(frozen=True)
class BlendPart:
    vae: KnownVae
    weight: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.vae.id, "name": self.vae.name, "weight": round(self.weight, 4)}


@dataclass(frozen=True)
class EmbeddedVae:
    """The model's own VAE: identity, name, relation to the known VAEs, health."""

    vae: VaeIdentity
    name: str | None
    relation: str  # one of RELATION_ORDER, or "unknown"
    health: Health
    related: KnownVae | None = None  # the known VAE `relation` is about (None for blend and unknown)
    blend: tuple[BlendPart, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.vae.id,
            "name": self.name,
            "relation": self.relation,
            "health": str(self.health),
            "blend": [part.to_json() for part in self.blend] if self.blend else None,
            "related": self.related.to_json() if self.related else None,
            "family": self.vae.family,
            "dtype": self.vae.dtype,
        }


@dataclass(frozen=True)
class AutomaticVae:
    """The file A1111/Forge's "Automatic" VAE setting loads for the model, and what the index knows of it."""

    path: str
    id: str | None = None
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "id": self.id, "name": self.name}


@dataclass(frozen=True)
class CheckReport:
    """What ``vaereg check`` says of one model (docs/check.md has the JSON contract)."""

    path: str
    embedded: EmbeddedVae | None
    needs_external_vae: bool
    reason: str
    recommended: KnownVae | None = None
    automatic_vae: AutomaticVae | None = None
    error: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "embedded": self.embedded.to_json() if self.embedded else None,
            "needs_external_vae": self.needs_external_vae,
            "reason": self.reason,
            "recommended": self.recommended.to_json() if self.recommended else None,
            "automatic_vae": self.automatic_vae.to_json() if self.automatic_vae else None,
            "error": self.error,
        }


def check_model(
    path: Path,
    *,
    plugins: Plugins,
    index: Index | None = None,
    registry: Registry | None = None,
    launchers: Sequence[LauncherFolders] = (),
    vae_folders: Sequence[Path] = (),
) -> CheckReport:
    """Check the VAE inside `path` against the known VAEs; see the module docstring.

    `launchers` (their folders) and `vae_folders` tell where A1111/Forge would look for an "Automatic" VAE;
    without a launcher holding the model, the model's own folder and `vae_folders` are searched.
    """
    from vaereg.identify import analyze

    shown = str(path)
    report, stats = analyze(path, plugins, with_file_hashes=False, with_stats=True)
    if report.error:
        return CheckReport(shown, None, False, f"unreadable: {report.error}", error=report.error)
    automatic = automatic_vae(path, launchers, vae_folders, index, registry)
    vae = report.vae
    if vae is None:
        return CheckReport(shown, None, True, "the model holds no VAE", automatic_vae=automatic)
    known = KnownVaes.gather(vae, own_path=path, index=index, registry=registry)
    embedded, ranked = _place(vae, known, stats)
    needs, reason = _verdict(embedded)
    recommended = None
    if needs:
        recommended = next((k for k in ranked if known.healthy(k.id) and k.id != vae.id), None)
        if recommended is None:
            reason += f"; no healthy known VAE is related to it: use a {vae.family} VAE you trust"
    warnings = () if index is not None else ("no index (run `vaereg scan`): only registry ids were compared",)
    return CheckReport(shown, embedded, needs, reason, recommended, automatic, warnings=warnings)


def _place(vae: VaeIdentity, known: KnownVaes, stats: Mapping[str, Any]) -> tuple[EmbeddedVae, list[KnownVae]]:
    """The embedded VAE's relation to the known ones, and the known ones worth recommending, best first."""
    relations = known.relations(vae)
    health = assess({n: t.shape for n, t in vae.tensor_digests.items()}, stats, vae.family, known.flags(vae.id))
    name = known.name(vae.id)
    # Closest first: by relation, then by how far the sketches are apart; a copy on disk breaks ties.
    related = sorted(relations, key=lambda i: (_rank(relations[i][0]), relations[i][1], not known.paths(i), i))
    best = relations[related[0]][0] if related else None
    fit = known.blend(vae) if best not in ("same", "precision-variant") else None
    # Recommend what the embedded VAE derives from most directly: blend components by weight, then the
    # related VAEs; a lone near-copy found by the fit comes last.
    ranked_ids = [p.id for p in fit.parts] if fit and fit.is_blend else []
    ranked_ids += related
    ranked_ids += [p.id for p in fit.parts] if fit and not fit.is_blend else []
    ranked = [known.vae(i) for i in dict.fromkeys(ranked_ids)]
    if fit and fit.is_blend:
        parts = tuple(BlendPart(known.vae(p.id), p.weight) for p in fit.parts)
        return EmbeddedVae(vae, name, "blend", health, blend=parts), ranked
    if best is None:
        return EmbeddedVae(vae, name, "unknown", health), ranked
    return EmbeddedVae(vae, name, best, health, related=known.vae(related[0])), ranked


def _rank(kind: str) -> int:
    return RELATION_ORDER.index(kind) if kind in RELATION_ORDER else len(RELATION_ORDER)


def _verdict(embedded: EmbeddedVae) -> tuple[bool, str]:
    what = describe(embedded)
    if not embedded.health.ok:
        return True, f"its VAE ({what}) is unhealthy: {embedded.health}"
    if embedded.blend:
        return True, f"its VAE is {what}, not a VAE trained as such"
    return False, f"its VAE ({what}) is healthy"


def describe(embedded: EmbeddedVae) -> str:
    """The embedded VAE in a few words: "SDXL VAE", "a BF16 copy of SDXL VAE", "a merge of A (0.70) and B"."""
    if embedded.blend:
        parts = [f"{p.vae.label} ({p.weight:.2f})" for p in embedded.blend]
        return "a merge of " + (", ".join(parts[:-1]) + " and " + parts[-1])
    related = embedded.related.label if embedded.related else None
    own = embedded.name or "an unknown VAE"
    if embedded.relation == "same":
        return embedded.name or related or own
    if embedded.relation == "precision-variant":
        return f"a {embedded.vae.dtype} copy of {related}"
    if embedded.relation == "same-encoder":
        return f"{own} with the encoder of {related} and another decoder"
    if embedded.relation == "same-decoder":
        return f"{own} with the decoder of {related} and another encoder"
    return own


# --- the known VAEs -----------------------------------------------------------------------------------


def _same_file(a: str | Path, b: str | Path) -> bool:
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
                self.copies[vae_id] = [c for c in index.copies(vae_id) if not _same_file(c.path, own_path)]
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
        from vaereg.catalog import Catalog

        return Catalog(self.index, self.registry).entry_for(vae_id, self.copies.get(vae_id, []))

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
            best = min(scored, key=lambda rd: (_rank(rd[0]), rd[1]))
            if best[0] in RELATION_ORDER:
                found[vae_id] = best
        # Registry entries with ids but no indexed copy: only the ids can tell.
        for vae_id, entries in self.entries.items():
            kinds = [relation_from_ids(vae, vae_id, e.encoder_id, e.decoder_id) for e in entries]
            best_kind = min(kinds, key=_rank, default="different")
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
            best = min(variants, key=lambda v: _PRECISION_RANK.get(v.dtype, len(_PRECISION_RANK)))
            # Per-sample dtypes matter only for a VAE stored in several dtypes.
            candidates.append(Sketch.of(self._detailed(best) if best.dtype == "mixed" else best))
        return explain(Sketch.of(vae), candidates) if candidates else None


# --- what the launcher would load -------------------------------------------------------------------------


def automatic_vae(
    model: Path,
    launchers: Iterable[LauncherFolders],
    vae_folders: Sequence[Path],
    index: Index | None,
    registry: Registry | None,
) -> AutomaticVae | None:
    """The VAE file A1111/Forge's "Automatic" setting loads for `model` today, or None (its own VAE)."""
    try:
        from vaereg_plugins.launchers import automatic_vae_candidates
    except ImportError:  # the built-in launcher plugin is not installed: nothing to say
        return None
    webui = next(
        (
            lf
            for lf in launchers
            if lf.launcher in AUTOMATIC_VAE_LAUNCHERS and any(_inside(model, folder) for folder in lf.checkpoints)
        ),
        None,
    )
    if webui is not None:
        found = automatic_vae_candidates(model, webui.vae, webui.checkpoints)
    else:
        found = automatic_vae_candidates(model, vae_folders)
    found = [p for p in found if not _same_file(p, model)]
    if not found:
        return None
    path = str(found[0])
    row = index.get(os.path.abspath(path)) if index is not None else None
    try:
        fresh = row is not None and row.matches(os.stat(path))  # an index row of an older file says nothing
    except OSError:
        fresh = False
    if not fresh or row is None or row.id is None:
        return AutomaticVae(path)
    known = KnownVaes(registry, index, copies={row.id: [row]})
    return AutomaticVae(path, row.id, known.name(row.id))


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return False
    return True
