"""`check`'s verdicts kept in the index: asking again of an unchanged file in an unchanged library needs no
relations, no fit and no numpy.

A verdict (`answers.check.Verdict`: the embedded VAE's relation, health, whether it needs an external VAE and
which one) is a function of the checked VAE and the library it is judged against - every file, VAE and tensor
row of the index, the registry's merged entries, the launchers' VAE folders (which copy is listed first) and
the checked file's own path (its copies are left out). It is kept for the file's path under a key over all of
that: the index's generation (counted up by triggers on every row change, whoever writes: store/kept.py), a
fingerprint of the registry's entries, the folders, the real path, the exact VAE and vaereg's version; it is
used only while the key is the same, so a kept verdict is always the one a fresh computation would give.
Verdicts with decode findings (``check --decode``) are not kept: they come from running the VAE.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from vaereg import __version__

if TYPE_CHECKING:
    from vaereg.identity.report import VaeIdentity
    from vaereg.store.index import Index
    from vaereg.store.registry.read import Registry

#: Bump when what a kept verdict holds changes.
KEPT_VERSION = 1


@dataclass(frozen=True)
class Keeper:
    """The verdict kept for one file in one library state, and where to keep a new one."""

    index: Index
    path: str
    key: str
    record: dict[str, Any] | None

    @classmethod
    def of(
        cls, index: Index, registry: Registry | None, path: Path, vae: VaeIdentity, vae_folders: Sequence[Path]
    ) -> Keeper:
        """Read what is kept for `path`; `record` is that verdict's record when its key is today's."""
        path_str = os.path.abspath(path)
        generation, key, answer = index.kept_answer(path_str)
        state = [
            KEPT_VERSION,
            __version__,
            generation,
            vae.exact_id,
            os.path.realpath(path),
            [str(folder) for folder in vae_folders],
            registry.fingerprint() if registry is not None else None,
        ]
        import xxhash

        today = xxhash.xxh3_128_hexdigest(json.dumps(state).encode())
        record = None
        if key == today and answer is not None:
            try:
                record = json.loads(answer)
            except ValueError:
                record = None  # not what this code writes: computed afresh, and kept anew
        return cls(index, path_str, today, record)

    def keep(self, record: dict[str, Any]) -> bool:
        return self.index.keep_answer(self.path, self.key, json.dumps(record))
