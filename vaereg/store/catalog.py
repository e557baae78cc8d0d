"""What is known about VAEs: the registry's names, aliases, notes and flags joined to the copies on this machine.

`vaereg lookup`, `vaereg ls`, `vaereg name`/`alias`/`unname` and the Python API (`vaereg.api`) all answer
from here, with the same records, so the CLI's ``--json`` and the API cannot drift apart. The logic is pure
over an `Index` and a `Registry` passed in; registry writes go through the registry's own API.

Names attach to canonical ids (`id`, the identity at fp16 precision): naming one copy names every copy of
that VAE, fp32, fp16 or inside a checkpoint. A registry entry belongs to an identity by its `id`, or, while
its ids are not learnt yet, by the SHA-256 of a file it lists that some copy on this machine has.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Iterable, Sequence

from vaereg.errors import (
    AmbiguousQueryError,
    NameTakenError,
    NoMatchError,
    RegistryError,
)
from vaereg.store.index import LOOKUP_KINDS, Index, IndexedFile
from vaereg.store.overview import SameBytes
from vaereg.store.registry.read import Registry
from vaereg.store.registry.schema import LABEL_FIELDS, Entry
from vaereg.store.views import (
    LookupMatch,
    LookupResult,
    MatchedHash,
    NamingPlan,
    NamingResult,
    VaeOverview,
    VaeSummary,
)

if TYPE_CHECKING:
    from vaereg.plugin.manager import Plugins

#: What a lookup lists first: a registry entry's own words, then canonical ids, then whole-file hashes.
_KIND_RANK = {kind: rank for rank, kind in enumerate((*LABEL_FIELDS, *LOOKUP_KINDS))}
_FAMILY = re.compile(r"kl-f\d+-(\d+)ch")

#: A group of hits: the canonical id, or (for a registry entry whose id is not known) None and its slug.
_Key = tuple[str | None, str | None]


def latent_channels_of(family: str | None) -> int | None:
    """The latent channels a family name states (``kl-f8-16ch`` -> 16); None for ``unknown`` or no family."""
    found = _FAMILY.fullmatch(family or "")
    return int(found[1]) if found else None


def reclaimable_bytes(copies: Iterable[IndexedFile]) -> int:
    """Bytes that byte-identical standalone copies waste: n files with one SHA-256 hold n - 1 needless copies.

    Each inode counts once (hard links already share their bytes). Files not hashed yet do not count, nor do
    copies inside checkpoints: those hold more than the VAE, so no other file can stand in for them.
    """
    same = SameBytes()
    for copy in copies:
        if not copy.embedded and copy.sha256 is not None:
            same.add(copy.sha256, copy.dev, copy.inode, copy.size)
    return same.wasted


def _preferred(entries: Sequence[Entry]) -> Entry:
    # Several entries for one VAE: a named one; of those the last merged, since entries only the local layer
    # declares come after the shipped and shared ones.
    named = [entry for entry in entries if entry.name]
    return (named or list(entries))[-1]


# --- the catalog -------------------------------------------------------------------------------------


class Catalog:
    """Lookups, listings and naming over one index and one registry.

    `plugins`, when given, hears of every registry change (`vaereg_registry_changed`).
    """

    def __init__(self, index: Index, registry: Registry, plugins: Plugins | None = None) -> None:
        self.index = index
        self.registry = registry
        self.plugins = plugins
        self._unlearnt: tuple[object, frozenset[str]] = (None, frozenset())

    # -- what is known

    def lookup(self, query: str) -> LookupResult:
        """Every VAE whose ids or file hashes are `query` or start with it (any case, >= 6 hex digits), on this
        machine or in the registry, and every registry entry whose slug, name or an alias is `query` (any
        case). Raises ValueError for a query that is neither a hash nor such a word."""
        labelled = self.registry.find_by_label(query)
        try:
            hits = self.index.lookup(query)  # checks the query first, so its message is the one people see
            by_hash = self.registry.search_prefix(query)
        except ValueError as exc:
            if not labelled:
                raise ValueError(f"{exc}; nor is it the name, an alias or the slug of a registry entry") from None
            hits, by_hash = [], []
        targets: dict[tuple[str, str], set[_Key]] = {}
        hinted: dict[_Key, Entry] = {}
        for hit in hits:
            if hit.vae_id is not None:  # else a file that holds no VAE (a UNet, a LoRA): nothing to name
                targets.setdefault((hit.kind, hit.value), set()).add((hit.vae_id, None))
        for found in by_hash:
            keys = self._keys_of(found.entry)
            targets.setdefault((found.field, found.value), set()).update(keys)
            for key in keys:
                hinted.setdefault(key, found.entry)
        # A word names one entry: two entries spelling a name alike are two targets, however it is spelt.
        words: dict[tuple[str, str], tuple[str, set[_Key]]] = {}
        for found in labelled:
            keys = self._keys_of(found.entry)
            words.setdefault((found.field, found.entry.slug), (found.value, set()))[1].update(keys)
            for key in keys:
                hinted.setdefault(key, found.entry)
        matched: dict[_Key, list[MatchedHash]] = {}
        for (kind, value), keys in targets.items():
            for key in keys:
                matched.setdefault(key, []).append(MatchedHash(kind, value))
        for (kind, _), (value, keys) in words.items():
            for key in keys:
                if MatchedHash(kind, value) not in matched.get(key, ()):
                    matched.setdefault(key, []).append(MatchedHash(kind, value))
        matches = [
            self._match(key, sorted(hashes, key=lambda h: (_KIND_RANK[h.kind], h.value)), hinted.get(key))
            for key, hashes in matched.items()
        ]
        matches.sort(key=lambda m: (_KIND_RANK[m.matched[0].kind], m.id or "", m.slug or ""))
        # An encoder_id shared by several VAEs leads to all of them without being ambiguous; a prefix is
        # when it hits two values of one kind, or values (or words) that lead to different VAEs. Entries that
        # share one id are one VAE, so a name they share is not ambiguous.
        per_kind = Counter(kind for kind, _ in targets)
        groups = {frozenset(keys) for keys in targets.values()} | {frozenset(keys) for _, keys in words.values()}
        ambiguous = max(per_kind.values(), default=0) > 1 or len(groups) > 1
        return LookupResult(query, tuple(matches), ambiguous)

    def resolve(self, query: str) -> str:
        """The canonical id of the one VAE `query` names; NoMatchError / AmbiguousQueryError otherwise."""
        match = self.one(query)
        if match.id is None:
            raise NoMatchError(
                f"{query} is registry entry vae.{match.slug}, but no copy of it has been scanned: its id is not known"
            )
        return match.id

    def one(self, query: str) -> LookupMatch:
        """The one VAE `query` leads to (several matched values may lead to it)."""
        result = self.lookup(query)
        if not result.matches:
            raise NoMatchError(f"nothing matches {query}")
        if len(result.matches) > 1:
            raise AmbiguousQueryError(query, result.matches)
        return result.matches[0]

    def entry_for(self, vae_id: str, copies: Sequence[IndexedFile] | None = None) -> Entry | None:
        """The registry entry of a canonical id: the one with that `id`, else one listing a copy's SHA-256
        whose ids are not learnt yet (a shipped entry before the scan that teaches them)."""
        by_id = self.registry.find_by_id(vae_id)
        if by_id:
            return _preferred(by_id)
        files = self.index.copies(vae_id) if copies is None else copies
        return self._entry_listing(copy.sha256 for copy in files)

    def _entry_listing(self, sha256s: Iterable[str | None]) -> Entry | None:
        """The entry without an id that lists the first of these file hashes it lists, if any."""
        unlearnt = self._unlearnt_files()
        for sha256 in sha256s:
            if sha256 in unlearnt:
                listed = [entry for entry in self.registry.find_by_sha256(sha256) if entry.id is None]
                if listed:
                    return _preferred(listed)
        return None

    def distinct_vaes(self) -> list[VaeSummary]:
        """One summary per canonical id on this machine: named ones by name, then the unnamed ones by id."""
        summaries = [
            self._summary(found.id, found.family, found.latent_channels, found.copies)
            for found in self.index.identities()
        ]
        return sorted(summaries, key=lambda s: (s.name is None, (s.name or "").casefold(), s.id))

    def overview(self) -> list[VaeOverview]:
        """`distinct_vaes` with each VAE's copies counted rather than listed, in the same order: what the
        `ls` table needs, computed by the index (fast over 100,000 files)."""
        overviews = []
        for counts in self.index.identity_counts(self._unlearnt_files()):
            by_id = self.registry.find_by_id(counts.id)
            entry = _preferred(by_id) if by_id else self._entry_listing(counts.listed_sha256)
            overviews.append(VaeOverview(entry, counts))
        return sorted(overviews, key=lambda s: (s.name is None, (s.name or "").casefold(), s.id))

    def vae(self, vae_id: str) -> VaeSummary | None:
        """The summary of one canonical id, None when no indexed file holds it."""
        copies = tuple(self.index.copies(vae_id))
        if not copies:
            return None
        return self._summary(copies[0].id or vae_id, copies[0].family or "unknown", copies[0].latent_channels, copies)

    def copies(self, vae_id: str) -> list[IndexedFile]:
        """Every indexed file holding the canonical id, whatever its precision or container."""
        return self.index.copies(vae_id)

    # -- naming: plan, then execute

    def plan_name(
        self, query: str, name: str, *, note: str | None = None, flags: Iterable[str] = (), force: bool = False
    ) -> NamingPlan:
        """Plan giving the VAE `query` names the name `name` (and a note, flags) in the local registry.

        A name another VAE has (as its name or an alias, in any layer) is refused with `NameTakenError`; with
        `force` the plan takes it away from that VAE first."""
        target, registry = self.one(query), self.registry
        name, flags = (name or "").strip(), tuple(flags)
        if not name:
            raise RegistryError("a name cannot be empty")
        entry = target.entry
        if target.id is None:
            assert entry is not None  # a match without an id comes from a registry entry
            slug, changes = entry.slug, registry.plan_update(entry.slug, {"name": name}).describe()
        elif entry is not None and entry.id is None:
            # An entry joined by a file's SHA-256: it learns the ids first, so the name lands on it.
            identity = self._identity(target.id)
            learnt = {key: value for key, value in identity.items() if value and not getattr(entry, key)}
            slug = entry.slug
            changes = registry.plan_update(slug, {"id": target.id, **learnt, "name": name}).describe()
        else:
            plan = registry.plan_set_name(target.id, name, **self._identity(target.id))
            slug = plan.edits[0].slug if plan.edits else (entry.slug if entry else "")
            changes = plan.describe()
        if flags:
            changes += registry.plan_update(slug, {"flags": flags}).describe()
        note = (note or "").strip() or None
        current = registry.get(slug)
        if note and note not in ((current.notes or "") if current else "").split("\n"):
            changes.append(f"vae.{slug}: add note {note!r}")
        moved, releases = self._take((name,), target, slug, force)
        return NamingPlan(
            "name", target, slug, (*releases, *changes), self, name=name, note=note, flags=flags, moved=moved
        )

    def plan_alias(self, query: str, aliases: Iterable[str], *, force: bool = False) -> NamingPlan:
        """Plan adding aliases to the entry of the VAE `query` names (it must have one: name it first).

        Aliases another VAE has are refused, or with `force` taken away from it, as in `plan_name`."""
        target, aliases = self.one(query), tuple(aliases)
        if target.entry is None:
            raise RegistryError(f"{target.id} has no registry entry to add aliases to: name it first (vaereg name)")
        slug = target.entry.slug
        changes = self.registry.plan_update(slug, {"aliases": aliases}).describe()
        moved, releases = self._take(aliases, target, slug, force)
        return NamingPlan("alias", target, slug, (*releases, *changes), self, aliases=aliases, moved=moved)

    def plan_unname(self, query: str) -> NamingPlan:
        """Plan removing the local name of the VAE `query` names, so a lower layer's name (if any) shows."""
        target = self.one(query)
        entry = target.entry
        if entry is None or entry.name is None:  # already unnamed: nothing to change, nothing to refuse
            return NamingPlan("unname", target, entry.slug if entry else "", (), self)
        if target.id is not None and entry.id == target.id:
            changes = self.registry.plan_remove_name(target.id).describe()  # refuses a name not written locally
        else:
            changes = self.registry.plan_update(entry.slug, {"name": None}).describe()
            if not changes:
                raise RegistryError(
                    f"the name of vae.{entry.slug} does not come from the local registry "
                    f"{self.registry.local_path}, the only one vaereg writes"
                )
        return NamingPlan("unname", target, entry.slug, tuple(changes), self)

    def execute(self, plan: NamingPlan) -> NamingResult:
        """Write `plan` through the registry's API and tell the plugins when something changed."""
        registry, target = self.registry, plan.target
        released: list[str] = []
        for label in plan.moved:
            released += registry.release(label, keep=self._keep(target, plan.slug))
        for slug in dict.fromkeys(released):
            if self.plugins is not None:
                moved_from = registry.get(slug)
                self.plugins.registry_changed(slug, moved_from.to_json() if moved_from else None)
        before = registry.get(plan.slug) if plan.slug else None
        if plan.action == "unname" and plan.empty:
            return NamingResult(plan.action, target.id, plan.slug, before, False)
        entry: Entry | None
        if plan.action == "name":
            assert plan.name is not None
            entry = self._write_name(target, plan.slug, plan.name)
            if plan.note:
                entry = registry.add_note(entry.slug, plan.note)
            if plan.flags:
                entry = registry.add_flags(entry.slug, plan.flags)
        elif plan.action == "alias":
            entry = registry.add_aliases(plan.slug, plan.aliases)
        elif target.id is not None and before is not None and before.id == target.id:
            entry = registry.remove_name(target.id)
        else:
            entry = registry.update(plan.slug, {"name": None})
        slug = entry.slug if entry else plan.slug
        changed = entry != before
        if changed and self.plugins is not None:
            self.plugins.registry_changed(slug, entry.to_json() if entry else None)
        return NamingResult(plan.action, target.id, slug, entry, changed)

    def name(
        self, query: str, name: str, *, note: str | None = None, flags: Iterable[str] = (), force: bool = False
    ) -> NamingResult:
        return self.plan_name(query, name, note=note, flags=flags, force=force).execute()

    def alias(self, query: str, aliases: Iterable[str], *, force: bool = False) -> NamingResult:
        return self.plan_alias(query, aliases, force=force).execute()

    def unname(self, query: str) -> NamingResult:
        return self.plan_unname(query).execute()

    # -- helpers

    def _keep(self, target: LookupMatch, slug: str) -> frozenset[str]:
        """The entries that are the VAE being named: the one written, the one found, those with its id."""
        keep = {slug} | ({target.entry.slug} if target.entry else set())
        if target.id:
            keep |= {entry.slug for entry in self.registry.find_by_id(target.id)}
        return frozenset(keep)

    def _take(
        self, labels: Iterable[str], target: LookupMatch, slug: str, force: bool
    ) -> tuple[tuple[str, ...], list[str]]:
        """The labels other VAEs have, and the changes that take them away; `NameTakenError` without `force`."""
        keep, moved, changes = self._keep(target, slug), [], []
        for label in labels:
            holders = [(m.field, m.entry) for m in self.registry.holders_of(label) if m.entry.slug not in keep]
            if not holders:
                continue
            if not force:
                raise NameTakenError(label, holders, target.id or f"vae.{slug}")
            moved.append(label)
            changes += self.registry.plan_release(label, keep).describe()
        return tuple(moved), changes

    def _write_name(self, target: LookupMatch, slug: str, name: str) -> Entry:
        registry = self.registry
        if target.id is None:
            return registry.update(slug, {"name": name})
        identity = self._identity(target.id)
        if target.entry is not None and target.entry.id is None:
            # joined by a copy's SHA-256: the entry learns the ids first, so set_name finds it by id
            registry.learn_ids(target.entry.slug, target.id, **identity)
        return registry.set_name(target.id, name, **identity)

    def _identity(self, vae_id: str) -> dict[str, str | None]:
        """What the index knows of a canonical id that the registry keeps beside a name."""
        vaes = self.index.vaes_by_id(vae_id)
        if not vaes:
            return {"family": None, "encoder_id": None, "decoder_id": None}
        vae = vaes[0]
        family = vae.family if vae.family != "unknown" else None  # "unknown" says nothing worth keeping
        return {"family": family, "encoder_id": vae.encoder_id, "decoder_id": vae.decoder_id}

    def _unlearnt_files(self) -> frozenset[str]:
        """The SHA-256 of every file listed by an entry without an id: the only ones worth a registry query
        when `ls` joins thousands of copies. Rebuilt when the registry was re-read (its dict is replaced)."""
        entries = self.registry.entries
        if self._unlearnt[0] is not entries:
            listed = frozenset(known.sha256 for entry in entries.values() if entry.id is None for known in entry.files)
            self._unlearnt = (entries, listed)
        return self._unlearnt[1]

    def _keys_of(self, entry: Entry) -> list[_Key]:
        """The VAEs a registry entry stands for: its id, else the ids of the indexed files it lists."""
        if entry.id:
            return [(entry.id, None)]
        ids = {
            hit.vae_id
            for known in entry.files
            for hit in self.index.lookup(known.sha256)
            if hit.kind == "sha256" and hit.value == known.sha256 and hit.vae_id is not None
        }
        return [(vae_id, None) for vae_id in sorted(ids)] or [(None, entry.slug)]

    def _match(self, key: _Key, matched: list[MatchedHash], hinted: Entry | None) -> LookupMatch:
        vae_id, slug = key
        if vae_id is None:
            entry = self.registry.get(slug or "") or hinted
            family = entry.family if entry else None
            return LookupMatch(None, entry, family, latent_channels_of(family), tuple(matched), ())
        copies = tuple(self.index.copies(vae_id))
        entry = self.entry_for(vae_id, copies) or hinted
        if copies:
            family, latent = copies[0].family, copies[0].latent_channels
        else:
            family = entry.family if entry else None
            latent = latent_channels_of(family)
        return LookupMatch(vae_id, entry, family, latent, tuple(matched), copies)

    def _summary(
        self, vae_id: str, family: str, latent_channels: int | None, copies: Sequence[IndexedFile]
    ) -> VaeSummary:
        return VaeSummary(
            id=vae_id,
            entry=self.entry_for(vae_id, copies),
            family=family,
            latent_channels=latent_channels,
            copies=tuple(copies),
            reclaimable_bytes=reclaimable_bytes(copies),
        )
