"""What the catalog answers with: frozen records of lookups, distinct VAEs and naming, and their JSON.

The CLI's ``--json`` and the Python API print these same records (docs/json.md), so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from vaereg.store.registry.schema import Entry

if TYPE_CHECKING:
    from vaereg.store.catalog import Catalog
    from vaereg.store.overview import IdentityCounts
    from vaereg.store.rows import IndexedFile


class _Described:
    """What the registry entry says, for records that carry one as `entry`."""

    entry: Entry | None

    @property
    def name(self) -> str | None:
        return self.entry.name if self.entry else None

    @property
    def label(self) -> str:
        """What to call the VAE in front of a person."""
        return self.name or "unnamed"

    @property
    def slug(self) -> str | None:
        return self.entry.slug if self.entry else None

    @property
    def aliases(self) -> tuple[str, ...]:
        return self.entry.aliases if self.entry else ()

    @property
    def notes(self) -> str | None:
        return self.entry.notes if self.entry else None

    @property
    def flags(self) -> tuple[str, ...]:
        return self.entry.flags if self.entry else ()

    @property
    def base(self) -> str | None:
        """The model whose latent space the VAE serves, as its registry entry says (``SD1``, ``SDXL``...)."""
        return self.entry.base if self.entry else None

    @property
    def bases(self) -> list[str]:
        """The models whose latent space the VAE serves: the registry's `base`, and the base models of the
        indexed checkpoints that embed it (identity/base.py)."""
        found = {copy.base for copy in getattr(self, "copies", ()) if copy.base}
        if self.base:
            found.add(self.base)
        return sorted(found)


@dataclass(frozen=True)
class MatchedHash:
    """One hash value a query matched, and which kind it is (``id``, ``encoder_id``, ``sha256``, ``autov2``...)."""

    kind: str
    value: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}


@dataclass(frozen=True)
class LookupMatch(_Described):
    """One VAE a query leads to: its canonical id (None while only a registry entry knows of it, by file
    hash), the entry, the hashes that matched and every indexed copy."""

    id: str | None
    entry: Entry | None
    family: str | None
    latent_channels: int | None
    matched: tuple[MatchedHash, ...]
    copies: tuple[IndexedFile, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "aliases": list(self.aliases),
            "family": self.family,
            "latent_channels": self.latent_channels,
            "notes": self.notes,
            "flags": list(self.flags),
            "matched": [hit.to_json() for hit in self.matched],
            "copies": [copy.to_json() for copy in self.copies],
            "slug": self.slug,
            "base": self.base,
            "bases": self.bases,
        }


@dataclass(frozen=True)
class LookupResult:
    """What `vaereg lookup HASH` says. `ambiguous`: a prefix that hit several values of one kind, or hashes
    leading to different VAEs; `matches` are then the candidates."""

    query: str
    matches: tuple[LookupMatch, ...]
    ambiguous: bool

    @property
    def found(self) -> bool:
        """One answer: something matched, and unambiguously."""
        return bool(self.matches) and not self.ambiguous

    def to_json(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "matches": [match.to_json() for match in self.matches],
            "ambiguous": self.ambiguous,
        }


@dataclass(frozen=True)
class VaeSummary(_Described):
    """One distinct VAE (canonical id) on this machine, as `vaereg ls` shows it."""

    id: str
    entry: Entry | None
    family: str
    latent_channels: int | None
    copies: tuple[IndexedFile, ...]
    reclaimable_bytes: int

    @property
    def standalone(self) -> int:
        return sum(not copy.embedded for copy in self.copies)

    @property
    def embedded(self) -> int:
        return sum(copy.embedded for copy in self.copies)

    @property
    def first_standalone(self) -> str | None:
        """The first standalone copy's path, in path order (what an unnamed VAE is called after)."""
        return min((c.path for c in self.copies if not c.embedded), default=None)

    @property
    def first_embedded(self) -> str | None:
        """The first checkpoint holding the VAE, in path order."""
        return min((c.path for c in self.copies if c.embedded), default=None)

    @property
    def diffusers_paths(self) -> tuple[str, ...]:
        """Standalone copies that are a diffusers folder's weights (their folder may name the VAE)."""
        from vaereg.files.names import is_diffusers_weights

        return tuple(c.path for c in self.copies if not c.embedded and is_diffusers_weights(c.path))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "family": self.family,
            "latent_channels": self.latent_channels,
            "copies": [copy.to_json() for copy in self.copies],
            "reclaimable_bytes": self.reclaimable_bytes,
            "slug": self.slug,
            "aliases": list(self.aliases),
            "flags": list(self.flags),
            "standalone": self.standalone,
            "embedded": self.embedded,
            "base": self.base,
            "bases": self.bases,
        }


@dataclass(frozen=True)
class VaeOverview(_Described):
    """One distinct VAE as the `vaereg ls` table shows it: a `VaeSummary` whose copies are counted, not listed."""

    entry: Entry | None
    counts: IdentityCounts

    @property
    def id(self) -> str:
        return self.counts.id

    @property
    def family(self) -> str:
        return self.counts.family

    @property
    def copies(self) -> int:  # type: ignore[override]  # a count here; _Described.bases is overridden below
        return self.counts.copies

    @property
    def standalone(self) -> int:
        return self.counts.standalone

    @property
    def embedded(self) -> int:
        return self.counts.embedded

    @property
    def reclaimable_bytes(self) -> int:
        return self.counts.reclaimable_bytes

    @property
    def bases(self) -> list[str]:
        return sorted({*self.counts.bases, *([self.base] if self.base else [])})

    @property
    def diffusers_paths(self) -> tuple[str, ...]:
        from vaereg.files.names import is_diffusers_weights

        return tuple(path for path in self.counts.diffusers_paths if is_diffusers_weights(path))

    @property
    def first_standalone(self) -> str | None:
        return self.counts.first_standalone

    @property
    def first_embedded(self) -> str | None:
        return self.counts.first_embedded


Action = Literal["name", "alias", "unname"]


@dataclass(frozen=True)
class NamingResult:
    """A naming change as written: the entry as it now stands (None when the change removed it)."""

    action: Action
    id: str | None
    slug: str
    entry: Entry | None
    changed: bool  # False when the registry already said so and nothing was written

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "id": self.id,
            "slug": self.slug,
            "changed": self.changed,
            "entry": self.entry.to_json() if self.entry else None,
        }


@dataclass(frozen=True)
class NamingPlan:
    """A change to the local registry about one VAE. Nothing is written until `execute`, which applies it
    to the registry as it is then (another process may have written meanwhile)."""

    action: Action
    target: LookupMatch
    slug: str  # the entry written; for a new entry the slug planned, which a concurrent write may shift
    changes: tuple[str, ...]  # for people, in the registry's words ("vae.<slug>: name = '...'")
    catalog: Catalog = field(repr=False, compare=False)
    name: str | None = None
    aliases: tuple[str, ...] = ()
    note: str | None = None
    flags: tuple[str, ...] = ()
    moved: tuple[str, ...] = ()  # names and aliases taken away from other VAEs first (``force``)

    @property
    def empty(self) -> bool:
        return not self.changes

    def execute(self) -> NamingResult:
        return self.catalog.execute(self)

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "id": self.target.id, "slug": self.slug, "changes": list(self.changes)}
