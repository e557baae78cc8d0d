"""``vaereg check MODEL``: is the model's own VAE fit to use, or does it need an external one?

One pass over the embedded VAE's tensors gives its identity, sketch and health stats; for a file the index holds
unchanged, the index gives them without reading the file (`store.answer.indexed_model`). The known VAEs - the
registry's entries and the index's standalone VAEs, precision variants counted once, merges left out
(`answers.known`) - then say what it is: the same as one of them, a precision variant, one with the same
encoder or decoder, a blend of several (`blend`), or unknown. Other checkpoints holding the same VAE are
listed, never counted as evidence. The verdict asks for an external VAE when there is no VAE, an unhealthy
one, or a blend, and recommends the healthy known VAE the embedded one is closest to or made from that the
user can load: one with standalone copies, else a registry entry with a source to download it from.
The registry is only read; the index only keeps the verdict on an unchanged file, for the next call to
reuse while the library is the same (`answers.kept`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from vaereg.answers.automatic import AutomaticVae, automatic_vae
from vaereg.answers.health import Health, assess
from vaereg.answers.known import KnownVae, KnownVaes
from vaereg.answers.latent import may_recommend
from vaereg.answers.relation import relation_rank
from vaereg.identity.report import VaeIdentity

if TYPE_CHECKING:
    from vaereg.answers.decode import DecodeFindings
    from vaereg.plugin.manager import Plugins
    from vaereg.plugin.types import LauncherFolders
    from vaereg.store.index import Index
    from vaereg.store.registry.read import Registry


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
    #: other indexed checkpoints holding the same VAE: information only, never evidence of what it is
    embedded_in: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.vae.id,
            "name": self.name,
            "relation": self.relation,
            "health": str(self.health),
            "blend": [part.to_json() for part in self.blend] if self.blend else None,
            "related": self.related.to_json() if self.related else None,
            "also_embedded_in": list(self.embedded_in),
            "family": self.vae.family,
            "dtype": self.vae.dtype,
        }


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
    #: the model's base (identity/base.py): only VAEs of its latent space are recommended
    base: str | None = None
    decode: DecodeFindings | None = None  # `check --decode`: what the round trip measured

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "base": self.base,
            "embedded": self.embedded.to_json() if self.embedded else None,
            "needs_external_vae": self.needs_external_vae,
            "reason": self.reason,
            "recommended": self.recommended.to_json() if self.recommended else None,
            "automatic_vae": self.automatic_vae.to_json() if self.automatic_vae else None,
            "error": self.error,
            "decode": self.decode.to_json() if self.decode else None,
        }


@dataclass(frozen=True)
class Verdict:
    """What the known VAEs say of a model's own VAE: what it is, and whether (and which) external VAE to load.
    A function of the VAE and the library alone, so it is kept in the index per library state (answers/kept.py)."""

    embedded: EmbeddedVae
    needs_external_vae: bool
    reason: str
    recommended: KnownVae | None

    def to_record(self) -> dict[str, Any]:
        """Everything but the VAE's identity (which the index holds): full-precision weights, raw problems."""
        e = self.embedded
        return {
            "name": e.name,
            "relation": e.relation,
            "health": list(e.health.problems),
            "related": e.related.to_json() if e.related else None,
            "blend": [[part.vae.to_json(), part.weight] for part in e.blend] if e.blend is not None else None,
            "embedded_in": list(e.embedded_in),
            "needs_external_vae": self.needs_external_vae,
            "reason": self.reason,
            "recommended": self.recommended.to_json() if self.recommended else None,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], vae: VaeIdentity) -> Verdict:
        """The verdict `to_record` wrote; TypeError (or KeyError, ValueError) for anything else."""

        def text(value: Any, *, optional: bool = False) -> Any:
            if not (isinstance(value, str) or (optional and value is None)):
                raise TypeError(f"not a string: {value!r}")
            return value

        def texts(values: Any) -> tuple[str, ...]:
            if not isinstance(values, list):
                raise TypeError(f"not a list: {values!r}")
            return tuple(text(v) for v in values)

        def known(d: Any) -> KnownVae | None:
            if d is None:
                return None
            return KnownVae(text(d["id"]), text(d["name"], optional=True), texts(d["paths"]), text(d["source"], optional=True))

        blend = record["blend"]
        parts = tuple(BlendPart(known(v), float(w)) for v, w in blend) if blend is not None else None
        if parts is not None and any(part.vae is None for part in parts):
            raise TypeError("a blend part without its VAE")
        if not isinstance(record["needs_external_vae"], bool):
            raise TypeError("needs_external_vae is not a boolean")
        embedded = EmbeddedVae(
            vae,
            text(record["name"], optional=True),
            text(record["relation"]),
            Health(texts(record["health"])),
            related=known(record["related"]),
            blend=parts,  # type: ignore[arg-type]
            embedded_in=texts(record["embedded_in"]),
        )
        return cls(embedded, record["needs_external_vae"], text(record["reason"]), known(record["recommended"]))


def check_model(
    path: Path,
    *,
    plugins: Plugins,
    index: Index | None = None,
    registry: Registry | None = None,
    launchers: Sequence[LauncherFolders] = (),
    vae_folders: Sequence[Path] = (),
    decode: Callable[[Path, Sequence[KnownVae], tuple[str, ...]], DecodeFindings | None] | None = None,
    rehash: bool = False,
) -> CheckReport:
    """Check the VAE inside `path` against the known VAEs; see the module docstring.

    `launchers` (their folders) and `vae_folders` tell where A1111/Forge would look for an "Automatic" VAE;
    without a launcher holding the model, the model's own folder and `vae_folders` are searched.
    `decode` (``answers.decode.decode_check``, bound) runs the VAE: given the model, the known VAEs with
    copies on disk, closest first, and the registry's flags, its findings join the verdict (it reads the
    file itself). The identity and health stats of a file `index` holds unchanged come from the index;
    `rehash` reads the file anyway.
    """
    from vaereg.store.answer import indexed_model

    shown = str(path)
    indexed = indexed_model(index, path) if index is not None and not rehash else None
    if indexed is None:
        from vaereg.identity.analyze import analyze

        report, stats = analyze(path, plugins, with_file_hashes=False, with_stats=True)
    else:
        report, stats = indexed
    if report.error:
        return CheckReport(shown, None, False, f"unreadable: {report.error}", error=report.error)
    automatic = automatic_vae(path, launchers, vae_folders, index, registry)
    vae = report.vae
    if vae is None:
        return CheckReport(shown, None, True, "the model holds no VAE", automatic_vae=automatic, base=report.base)
    launcher_vae_folders = [folder for found in launchers for folder in found.vae] + list(vae_folders)
    keeper = None
    verdict: Verdict | None = None
    findings: DecodeFindings | None = None
    if indexed is not None and decode is None:  # an unchanged file: its verdict may be kept (answers/kept.py)
        from vaereg.answers.kept import Keeper

        assert index is not None
        keeper = Keeper.of(index, registry, path, vae, launcher_vae_folders)
        verdict = _recall(keeper.record, vae)
    if verdict is None:
        known = KnownVaes.gather(
            vae, own_path=path, index=index, registry=registry, launcher_vae_folders=launcher_vae_folders
        )
        embedded, ranked = _place(vae, known, stats)
        if decode is not None:
            findings = decode(path, [k for k in ranked if k.paths and k.id != vae.id], known.flags(vae.id))
        verdict = _judge(embedded, ranked, known, report.base, findings)
        if keeper is not None:
            keeper.keep(verdict.to_record())
    warnings = () if index is not None else ("no index (run `vaereg scan`): only registry ids were compared",)
    return CheckReport(
        shown,
        verdict.embedded,
        verdict.needs_external_vae,
        verdict.reason,
        verdict.recommended,
        automatic,
        warnings=warnings,
        base=report.base,
        decode=findings,
    )


def _recall(record: Mapping[str, Any] | None, vae: VaeIdentity) -> Verdict | None:
    if record is None:
        return None
    try:
        return Verdict.from_record(record, vae)
    except (KeyError, TypeError, ValueError):  # not what this code writes: computed afresh, and kept anew
        return None


def _judge(
    embedded: EmbeddedVae, ranked: list[KnownVae], known: KnownVaes, base: str | None, findings: DecodeFindings | None
) -> Verdict:
    """Whether the model needs an external VAE and, if so, which known one to load."""
    vae = embedded.vae
    needs, reason = _verdict(embedded, findings)
    recommended = None
    if needs:
        # Only what can be loaded: a standalone file, else a registry entry with a source to download; and
        # only a VAE of the model's latent space (answers/latent.py).
        own = known.group_of(vae.id)
        fit = [
            k
            for k in ranked
            if k.id != own
            and known.healthy(k.id)
            and may_recommend(base, known.bases(k.id), same_encoder=vae.encoder_id in known.encoder_ids(k.id))
        ]
        recommended = next((k for k in fit if k.paths), None) or next((k for k in fit if k.source), None)
        if recommended is None:
            space = f"{base} " if base else ""
            reason += (
                f"; no healthy known {space}VAE with a file to load is related to it:"
                f" use a {base or vae.family} VAE you trust"
            )
    return Verdict(embedded, needs, reason, recommended)


def _place(vae: VaeIdentity, known: KnownVaes, stats: Mapping[str, Any]) -> tuple[EmbeddedVae, list[KnownVae]]:
    """The embedded VAE's relation to the known ones, and the known ones worth recommending, best first."""
    relations = known.relations(vae)
    health = assess({n: t.shape for n, t in vae.tensor_digests.items()}, stats, vae.family, known.flags(vae.id))
    name = known.name(vae.id)
    embedded_in = known.embedded_in(vae.id)
    # Closest first: by relation, then by how far the sketches are apart; a copy on disk breaks ties.
    related = sorted(relations, key=lambda i: (relation_rank(relations[i][0]), relations[i][1], not known.paths(i), i))
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
        return EmbeddedVae(vae, name, "blend", health, blend=parts, embedded_in=embedded_in), ranked
    if best is None:
        return EmbeddedVae(vae, name, "unknown", health, embedded_in=embedded_in), ranked
    return EmbeddedVae(vae, name, best, health, related=known.vae(related[0]), embedded_in=embedded_in), ranked


def _verdict(embedded: EmbeddedVae, findings: DecodeFindings | None = None) -> tuple[bool, str]:
    what = describe(embedded)
    if not embedded.health.ok:
        return True, f"its VAE ({what}) is unhealthy: {embedded.health}"
    if findings is not None and findings.problems:
        return True, f"its VAE ({what}) decodes badly: {'; '.join(findings.problems)}"
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
