"""The VAE files a launcher lists, grouped by the weights they hold: what launcher integrations show.

A launcher lists VAE *files* under names of its own (A1111: the file name; ComfyUI: the path below its VAE
folder). `group_listed` turns that list into one entry per distinct VAE (same canonical `id`: any container,
layout or precision), each with its copies, the most precise first - the one to load. `file_labels` gives
each listed name the words to show beside it: the VAE's name and, for a copy, which file it has the same
weights as. Pure: the caller supplies what each file holds (from the index).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping


@dataclass(frozen=True)
class ListedFile:
    """One entry of the launcher's VAE list and what it holds (`id` None: unreadable, or no VAE in it)."""

    name: str
    path: str
    id: str | None = None
    dtype: str | None = None
    size: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "id": self.id, "dtype": self.dtype, "size": self.size,
                "error": self.error}


@dataclass(frozen=True)
class ListedVae:
    """One distinct VAE among the listed files; `files[0]` is the copy to load."""

    id: str | None
    name: str | None  # the registry's name for these weights
    files: tuple[ListedFile, ...]

    @property
    def primary(self) -> ListedFile:
        return self.files[0]

    @property
    def copies(self) -> int:
        """Further files with the same weights."""
        return len(self.files) - 1

    @property
    def label(self) -> str:
        """``NAI anime VAE - animevae.pt, +4 copies``: the name when known, the file it loads, the others."""
        text = f"{self.name} - {self.primary.name}" if self.name else self.primary.name
        if self.copies:
            text += f", +{self.copies} {'copy' if self.copies == 1 else 'copies'}"
        return text

    @property
    def reclaimable_bytes(self) -> int:
        return sum(f.size for f in self.files[1:])

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "label": self.label, "load": self.primary.name,
                "files": [f.to_json() for f in self.files], "reclaimable_bytes": self.reclaimable_bytes}


def copy_rank(name: str, dtype: str | None) -> tuple[int, int, str]:
    """Of several copies of one VAE, the one to load first: the most precise, then safetensors, then by name."""
    from vaereg.files.names import is_safetensors_name
    from vaereg.identity.dtypes import precision_rank

    return (precision_rank(dtype), 0 if is_safetensors_name(name) else 1, name)


def _rank(f: ListedFile) -> tuple[int, int, str]:
    return copy_rank(f.name, f.dtype)


def group_listed(files: Iterable[ListedFile], name_of: Callable[[str], str | None] = lambda _id: None) -> list[ListedVae]:
    """One entry per distinct VAE, in the order the launcher lists their first file; a file whose content is
    unknown is an entry of its own."""
    groups: dict[str, list[ListedFile]] = {}
    for f in files:
        groups.setdefault(f.id if f.id else f"\0{f.name}", []).append(f)
    out = []
    for key, members in groups.items():
        vae_id = None if key.startswith("\0") else key
        out.append(ListedVae(vae_id, name_of(vae_id) if vae_id else None, tuple(sorted(members, key=_rank))))
    return out


def file_labels(groups: Iterable[ListedVae]) -> dict[str, str]:
    """Listed name -> what to show beside it: ``NAI anime VAE``, ``NAI anime VAE; same weights as
    animevae.pt``, or ``same weights as animevae.pt`` for an unnamed VAE. Files with nothing to say are left
    out."""
    labels: dict[str, str] = {}
    for g in groups:
        for i, f in enumerate(g.files):
            parts = [g.name] if g.name else []
            if i:
                parts.append(f"same weights as {g.primary.name}")
            elif f.error:
                parts.append(f.error)
            if parts:
                labels[f.name] = "; ".join(parts)
    return labels


def entry_file(value: str, groups: Iterable[ListedVae]) -> str | None:
    """The listed name an entry loads: its group's first file. `value` is an entry's label, or any listed
    file name (a workflow saved with a plain VAE loader, or a label whose copy count changed since)."""
    groups = list(groups)
    for g in groups:
        if g.label == value:
            return g.primary.name
    for g in groups:
        if any(f.name == value for f in g.files):
            return g.primary.name
    shown = value.split(" - ", 1)[1] if " - " in value else value  # "<name> - <file>, +N copies"
    shown = shown.rsplit(", +", 1)[0]
    for g in groups:
        if any(f.name == shown for f in g.files):
            return g.primary.name
    return None


def listed_files(listed: Mapping[str, str], held: Callable[[str], ListedFile | None]) -> list[ListedFile]:
    """The launcher's list with what each file holds; `held(path)` answers from the index (None: unknown)."""
    out = []
    for name, path in listed.items():
        found = held(path)
        out.append(ListedFile(name, path) if found is None else ListedFile(name, path, found.id, found.dtype,
                                                                            found.size, found.error))
    return out
