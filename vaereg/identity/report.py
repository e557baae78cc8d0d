"""The records vaereg reports: frozen dataclasses of raw values, shared by the CLI's --json and the API.

`to_json()` gives exactly the documented JSON objects (docs/json.md); the extra per-tensor data
(`tensor_digests`, `sketch`) feeds the index and comparisons and is not part of the JSON contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

#: Names of the whole-file hashes, in the order the JSON shows them.
FILE_HASH_NAMES = ("sha256", "autov1", "autov2", "autov3", "blake3", "crc32")


#: The identity specification the reports follow (docs/identity-spec.md); the index keeps it per row, so
#: rows identified under an older one are identified again (store/ingest.py).
SPEC_VERSION = 2


@dataclass(frozen=True)
class TensorDigest:
    """One canonical tensor: its shape, stored dtype and the two xxh3-128 digests (hex)."""

    dtype: str
    shape: tuple[int, ...]
    digest: str  # over the values rounded to fp16 (floats) - feeds `id`
    exact_digest: str  # over the stored values - feeds `exact_id`


@dataclass(frozen=True)
class TensorStats:
    """Health facts about one tensor's stored values (`answers.health`): a function of its bytes alone, so the
    index keeps them beside the tensor's digests."""

    nonfinite: int  # NaN and infinite values
    all_zero: bool


@dataclass(frozen=True)
class VaeIdentity:
    """The canonical identity of one VAE's weights (docs/identity-spec.md)."""

    id: str
    exact_id: str
    encoder_id: str
    decoder_id: str
    family: str
    latent_channels: int | None
    dtype: str
    layout: str
    prefix: str
    tensors: int
    params: int
    #: canonical tensor name -> digest record
    tensor_digests: Mapping[str, TensorDigest] = field(default_factory=dict, repr=False, compare=False)
    #: the linear sketch (little-endian float32 samples at seeded positions), see identity-spec
    sketch: bytes = field(default=b"", repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "exact_id": self.exact_id,
            "encoder_id": self.encoder_id,
            "decoder_id": self.decoder_id,
            "family": self.family,
            "latent_channels": self.latent_channels,
            "dtype": self.dtype,
            "layout": self.layout,
            "prefix": self.prefix,
            "tensors": self.tensors,
            "params": self.params,
        }


@dataclass(frozen=True)
class FileHashes:
    """Whole-file hashes as launchers and Civitai compute them; None where one does not apply or was skipped."""

    size: int
    sha256: str | None = None
    autov1: str | None = None
    autov2: str | None = None
    autov3: str | None = None
    blake3: str | None = None
    crc32: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, **{name: getattr(self, name) for name in FILE_HASH_NAMES}}


@dataclass(frozen=True)
class HashReport:
    """What `vaereg hash` says of one path."""

    path: str
    format: str | None
    error: str | None = None
    vae: VaeIdentity | None = None
    file: FileHashes | None = None
    #: The model a checkpoint is for (identity/base.py), None for a standalone VAE.
    base: str | None = None
    #: for a model with no VAE, what it is when its tensor names tell ("lora", "upscaler"...: identity.kinds)
    kind: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "error": self.error,
            "base": self.base,
            "vae": self.vae.to_json() if self.vae else None,
            "file": self.file.to_json() if self.file else None,
            "kind": self.kind,
        }
