"""``vaereg fix``: make the launcher load the right VAE for each checkpoint, by itself. Plan, then write.

AUTOMATIC1111 and reForge read a per-checkpoint preference from the checkpoint's user-metadata file, the
``.json`` beside it (``<checkpoint minus extension>.json``, key ``"vae"``, a file name from the launcher's VAE
list; ``modules/sd_vae.py resolve_vae_from_user_metadata``). For every checkpoint whose own VAE needs an
external one (``check``'s verdict), `plan_fix` picks the recommended VAE among the files that launcher lists
and plans that preference; `FixPlan.execute` writes it.

The rules:
- every other key of an existing user-metadata file is kept; the file is replaced atomically, written as the
  launcher writes it (JSON, 4-space indent, UTF-8);
- a preference the user set is never replaced (the plan reports it; ``force`` replaces it);
- what vaereg writes is marked in the same file (key ``vaereg_fix``: the name written, the VAE's id, whether
  vaereg created the file), so `plan_undo` removes only that - and leaves a preference the user changed since;
- launchers without such a preference (Forge, SD.Next, ComfyUI, InvokeAI, Fooocus) get a plan that says so
  and names what to install instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Sequence

from vaereg._fs import atomic_write, os_error_text
from vaereg.errors import UserError

if TYPE_CHECKING:
    from vaereg.answers.check import CheckReport
    from vaereg.plugin.types import LauncherFolders
    from vaereg.store.index import Index
    from vaereg.store.ingest import Ingest

#: Launchers whose checkpoint loader honours the ``"vae"`` key of ``<checkpoint>.json``.
USER_METADATA_LAUNCHERS = ("a1111", "reforge")

#: What to do where the launcher has no per-checkpoint preference vaereg can write.
NO_MECHANISM = {
    "forge": (
        "Forge does not read a per-checkpoint VAE when it loads a checkpoint (its modules/sd_vae.py resolve code "
        "is no longer called); install the extension: vaereg install-extension ROOT"
    ),
    "sdnext": (
        "SD.Next has no per-checkpoint VAE preference (only <checkpoint>.vae.safetensors beside it); "
        "install the extension: vaereg install-extension ROOT"
    ),
    "comfyui": (
        "ComfyUI has no per-checkpoint VAE preference; install the node pack (vaereg install-extension ROOT) "
        "and use 'Load Checkpoint (VAE checked)'"
    ),
    "invokeai": "InvokeAI keeps no per-checkpoint VAE preference vaereg can write",
    "fooocus": "Fooocus keeps no per-checkpoint VAE preference vaereg can write",
}

#: The key that marks what vaereg wrote into a user-metadata file.
MARK = "vaereg_fix"
#: Preference values that name no VAE: the launcher goes on to its other rules.
NO_PREFERENCE = (None, "", "Automatic")

Action = Literal["write", "keep", "user-set", "no-candidate", "fine", "error"]
UndoAction = Literal["remove", "unmark", "absent"]


class FixError(UserError):
    """The fix cannot be planned as asked (a launcher without per-checkpoint preferences); one line."""


@dataclass(frozen=True)
class VaeChoice:
    """A file in the launcher's VAE list: the name the launcher shows, the file it loads, what it holds."""

    name: str
    path: str
    id: str | None
    dtype: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "id": self.id}


@dataclass(frozen=True)
class FixItem:
    """What fix does for one checkpoint."""

    checkpoint: str
    metadata_file: str
    action: Action
    reason: str
    current: Any = None  # the "vae" value in the user-metadata file now, if any
    vae: VaeChoice | None = None  # the preference to write (action "write"), or the one in place ("keep")
    recommended_id: str | None = None
    recommended_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "metadata_file": self.metadata_file,
            "action": self.action,
            "reason": self.reason,
            "current": self.current,
            "vae": self.vae.to_json() if self.vae else None,
            "recommended": {"id": self.recommended_id, "name": self.recommended_name} if self.recommended_id else None,
        }


@dataclass(frozen=True)
class FixPlan:
    """The preferences to write for one launcher; `execute` alone touches the disk."""

    launcher: str
    root: str
    items: tuple[FixItem, ...]
    notices: tuple[str, ...] = ()

    @property
    def writes(self) -> tuple[FixItem, ...]:
        return tuple(i for i in self.items if i.action == "write")

    def execute(self) -> FixResult:
        written: list[FixItem] = []
        errors: list[str] = []
        for item in self.writes:
            try:
                _write_preference(item)
            except (OSError, ValueError, FixConflict) as exc:  # ValueError: no longer JSON
                errors.append(f"{item.metadata_file}: {_reason(exc)}")
            else:
                written.append(item)
        return FixResult(tuple(written), tuple(errors))

    def to_json(self) -> dict[str, Any]:
        return {
            "launcher": self.launcher,
            "root": self.root,
            "items": [i.to_json() for i in self.items],
            "notices": list(self.notices),
        }


@dataclass(frozen=True)
class FixResult:
    """What `execute` did: the items done (FixItem or UndoItem) and one line per file it could not write."""

    done: tuple[Any, ...]
    errors: tuple[str, ...] = ()


class FixConflict(Exception):
    """The user-metadata file changed between plan and write in a way that touches the preference."""


# --- planning -----------------------------------------------------------------------------------------


def metadata_file(checkpoint: str | Path) -> Path:
    """The user-metadata file A1111 reads for a checkpoint (``extra_networks.get_user_metadata``)."""
    return Path(os.path.splitext(os.fspath(checkpoint))[0] + ".json")


def read_metadata(path: Path) -> dict[str, Any] | None:
    """The user metadata in `path`, None when there is no file. ValueError when it is not a JSON object."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    data = json.loads(text)  # ValueError (JSONDecodeError, UnicodeDecodeError) for a file A1111 cannot read either
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, found {type(data).__name__}")
    return data


def vae_list(found: LauncherFolders) -> dict[str, Path]:
    """The launcher's VAE list: name -> the file that name loads (A1111's ``vae_dict``)."""
    from vaereg_plugins.launchers import webui_vae_list

    return webui_vae_list(found.vae, found.checkpoints)


def checkpoints_of(found: LauncherFolders, paths: Sequence[Path] = ()) -> list[Path]:
    """The checkpoints to consider: `paths` (files, or folders listed as the launcher lists checkpoints),
    else every checkpoint the launcher lists."""
    from vaereg_plugins.launchers import webui_checkpoints

    if not paths:
        return webui_checkpoints(found.checkpoints)
    out: dict[Path, None] = {}
    for path in paths:
        for item in webui_checkpoints([path]) if Path(path).is_dir() else [Path(path)]:
            out.setdefault(Path(os.path.abspath(item)), None)
    return list(out)


def lists_checkpoint(found: LauncherFolders, path: str | Path) -> bool:
    """Whether the launcher lists `path` as a checkpoint (in its checkpoint folders, by A1111's suffixes)."""
    from vaereg._fs import really_inside

    name = os.path.normcase(os.path.basename(path))
    return (name.endswith((".ckpt", ".safetensors")) and not name.endswith((".vae.ckpt", ".vae.safetensors"))
            and any(really_inside(path, folder) for folder in found.checkpoints))


def launcher_notices(found: LauncherFolders) -> tuple[str, ...]:
    """Launcher settings under which a per-checkpoint preference is not used (said, never changed)."""
    from vaereg_plugins.launchers import webui_vae_path

    notices = []
    vae_path = webui_vae_path(found.root)
    if vae_path is not None:
        notices.append(f"{found.root}: --vae-path {vae_path} is given: the launcher loads that VAE for every checkpoint")
    settings = found.root / "config.json"
    try:
        data = json.loads(settings.read_text(encoding="utf-8")) if settings.is_file() else {}
    except (OSError, ValueError):
        data = {}
    if isinstance(data, dict):
        sd_vae = data.get("sd_vae", "Automatic")
        overrides = data.get("sd_vae_overrides_per_model_preferences", True)
        if overrides and sd_vae not in ("Automatic", "auto"):
            notices.append(
                f"{settings}: the SD VAE setting is {sd_vae!r} and 'Selected VAE overrides per-model preferences' "
                "is on: the launcher uses these preferences only with SD VAE on 'Automatic'"
            )
    return tuple(notices)


def index_vae_list(found: LauncherFolders, index: Index, ingest: Ingest, *, with_file_hashes: bool = True
                   ) -> tuple[str, ...]:
    """Bring the files of the launcher's VAE list into the index (a stat each when unchanged), so that `check`
    knows them and their ids are at hand. Returns one line per file that could not be read."""
    from vaereg.store.scan import plan_scan

    files = [str(path) for path in vae_list(found).values()]
    if not files:
        return ()
    return plan_scan(files, index).execute(ingest, with_file_hashes=with_file_hashes).errors


def indexed_vae(index: Index) -> Callable[[Path], tuple[str | None, str | None]]:
    """``(id, dtype)`` of an indexed, unchanged file; ``(None, None)`` for one the index does not know as such."""

    def lookup(path: Path) -> tuple[str | None, str | None]:
        row = index.get(os.path.abspath(path))
        try:
            fresh = row is not None and row.matches(os.stat(path))
        except OSError:
            fresh = False
        return (row.id, row.dtype) if fresh and row is not None else (None, None)

    return lookup


def plan_fix(
    checkpoints: Iterable[Path],
    found: LauncherFolders,
    *,
    check: Callable[[Path], CheckReport],
    identify_vae: Callable[[Path], tuple[str | None, str | None]],
    force: bool = False,
) -> FixPlan:
    """What to write for each checkpoint. Reads only: `check` gives the verdict, `identify_vae` the
    ``(id, dtype)`` of a file in the launcher's VAE list (through the index)."""
    if found.launcher not in USER_METADATA_LAUNCHERS:
        raise FixError(NO_MECHANISM.get(found.launcher, f"{found.launcher} keeps no per-checkpoint VAE preference"))
    listed = vae_list(found)
    choices: list[VaeChoice] | None = None  # identified on first need

    def choices_now() -> list[VaeChoice]:
        nonlocal choices
        if choices is None:
            choices = [VaeChoice(name, str(path), *identify_vae(path)) for name, path in listed.items()]
        return choices

    items = [
        _plan_one(Path(ckpt), check, choices_now, listed, force=force)
        for ckpt in checkpoints
    ]
    return FixPlan(found.launcher, str(found.root), tuple(items), launcher_notices(found))


def _plan_one(
    checkpoint: Path,
    check: Callable[[Path], CheckReport],
    choices: Callable[[], list[VaeChoice]],
    listed: dict[str, Path],
    *,
    force: bool,
) -> FixItem:
    meta_path = metadata_file(checkpoint)
    item = FixItem(str(checkpoint), str(meta_path), "fine", "")
    try:
        meta = read_metadata(meta_path)
    except (OSError, ValueError) as exc:
        return replace(item, action="error", reason=f"{meta_path}: unreadable user metadata ({_reason(exc)})")
    current = (meta or {}).get("vae")
    item = replace(item, current=current)
    report = check(checkpoint)
    if report.error:
        return replace(item, action="error", reason=report.reason)
    if not report.needs_external_vae:
        return replace(item, reason=report.reason)
    rec = report.recommended
    if rec is None:
        return replace(item, action="no-candidate", reason=report.reason)
    item = replace(item, recommended_id=rec.id, recommended_name=rec.name)
    listed_copies = sorted((c for c in choices() if c.id == rec.id), key=_preference_order)
    if not listed_copies:
        where = f" (copies: {', '.join(rec.paths)})" if rec.paths else ""
        return replace(
            item,
            action="no-candidate",
            reason=f"{report.reason}; {rec.label} is not in the launcher's VAE list{where}: put a copy in its VAE folder",
        )
    best = listed_copies[0]
    auto = report.automatic_vae  # a file named after the checkpoint: the user's choice too, by its name
    if current in NO_PREFERENCE and auto is not None and not force:
        by_name = next((c for c in choices() if c.path == auto.path), None)
        if (by_name.id if by_name else auto.id) == rec.id:
            return replace(item, action="keep", vae=by_name, reason=f"{report.reason}; the launcher loads "
                           f"{Path(auto.path).name} for it by its name, which holds it")
        return replace(item, action="user-set", reason=f"{report.reason}; the launcher loads {Path(auto.path).name} "
                       "for it by its name ('Automatic'): kept (--force writes a preference over it)")
    if current in NO_PREFERENCE:
        return replace(item, action="write", vae=best, reason=report.reason)
    holds = next((c for c in choices() if c.name == current), None)
    if holds is not None and holds.id == rec.id:
        return replace(item, action="keep", vae=holds, reason=f"{report.reason}; the preference {current!r} holds it")
    if _ours(meta or {}, current) or force:
        return replace(item, action="write", vae=best, reason=report.reason)
    why = "names no file in the launcher's VAE list" if current not in listed else "holds another VAE"
    if current == "None":
        why = "says: the checkpoint's own VAE"
    return replace(
        item,
        action="user-set",
        reason=f"{report.reason}; the user's preference {current!r} {why} (kept; --force replaces it)",
    )


def _preference_order(choice: VaeChoice) -> tuple[int, int, str]:
    from vaereg.answers.listing import copy_rank

    return copy_rank(choice.name, choice.dtype)


def _ours(meta: dict[str, Any], current: Any) -> bool:
    mark = meta.get(MARK)
    return isinstance(mark, dict) and mark.get("vae") == current


# --- writing ------------------------------------------------------------------------------------------


def _write_preference(item: FixItem) -> None:
    assert item.vae is not None
    path = Path(item.metadata_file)
    meta = read_metadata(path)
    created = meta is None
    meta = dict(meta or {})
    if meta.get("vae") != item.current:  # edited since the plan (in the launcher's UI, say): not ours to decide
        raise FixConflict(f"the preference changed since it was planned ({item.current!r} -> {meta.get('vae')!r})")
    previous = meta.get(MARK) if isinstance(meta.get(MARK), dict) else {}
    # A user's preference replaced by --force is kept in the mark, so that undo puts it back.
    replaced = previous.get("replaced")
    if item.current not in NO_PREFERENCE and previous.get("vae") != item.current:
        replaced = item.current
    meta["vae"] = item.vae.name
    meta[MARK] = {"vae": item.vae.name, "id": item.vae.id, "created": bool(previous.get("created", created))}
    if replaced is not None:
        meta[MARK]["replaced"] = replaced
    atomic_write_json(path, meta)


def atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as A1111 writes user metadata (indent 4, UTF-8), by a temporary file and a rename."""
    atomic_write(path, json.dumps(data, indent=4, ensure_ascii=False))


# --- undo ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UndoItem:
    checkpoint: str
    metadata_file: str
    action: UndoAction
    reason: str
    restore: Any = None  # the user's preference a --force replaced, put back

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "metadata_file": self.metadata_file, "action": self.action,
                "reason": self.reason}


@dataclass(frozen=True)
class UndoPlan:
    items: tuple[UndoItem, ...]
    errors: tuple[str, ...] = field(default=())

    def execute(self) -> FixResult:
        done: list[UndoItem] = []
        errors = list(self.errors)
        for item in self.items:
            if item.action == "absent":
                continue
            try:
                _undo_one(item)
            except (OSError, ValueError) as exc:
                errors.append(f"{item.metadata_file}: {_reason(exc)}")
            else:
                done.append(item)
        return FixResult(tuple(done), tuple(errors))

    def to_json(self) -> dict[str, Any]:
        return {"items": [i.to_json() for i in self.items if i.action != "absent"], "errors": list(self.errors)}


def plan_undo(checkpoints: Iterable[Path]) -> UndoPlan:
    """What `fix --undo` removes: the preferences vaereg wrote, where they are still what it wrote."""
    items, errors = [], []
    for checkpoint in checkpoints:
        path = metadata_file(checkpoint)
        try:
            meta = read_metadata(path)
        except (OSError, ValueError) as exc:
            errors.append(f"{path}: unreadable user metadata ({_reason(exc)})")
            continue
        mark = (meta or {}).get(MARK)
        if not isinstance(mark, dict):
            items.append(UndoItem(str(checkpoint), str(path), "absent", "vaereg wrote nothing here"))
        elif _ours(meta or {}, (meta or {}).get("vae")):
            items.append(UndoItem(str(checkpoint), str(path), "remove", f"removes the preference {mark.get('vae')!r}",
                                  restore=mark.get("replaced")))
        else:
            items.append(UndoItem(str(checkpoint), str(path), "unmark",
                                  f"the preference was changed since to {(meta or {}).get('vae')!r}: kept"))
    return UndoPlan(tuple(items), tuple(errors))


def _undo_one(item: UndoItem) -> None:
    path = Path(item.metadata_file)
    meta = read_metadata(path)
    if meta is None:
        return
    mark = meta.pop(MARK, None)
    if not isinstance(mark, dict):
        return
    if item.action == "remove" and meta.get("vae") == mark.get("vae"):
        if item.restore is not None:
            meta["vae"] = item.restore
        else:
            meta.pop("vae", None)
    if mark.get("created") and not meta:
        path.unlink()
        return
    atomic_write_json(path, meta)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return os_error_text(exc)
    return " ".join(str(exc).split()) or type(exc).__name__
