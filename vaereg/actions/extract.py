"""The VAE inside a model, written out as a standalone .safetensors: plan first, then write.

The output holds the VAE in the canonical CompVis/LDM layout (canonical names and shapes, attention
projections as ``[C, C, 1, 1]`` convolutions), converted to fp16, to fp32, or kept in the stored dtype.
Its `id` equals the embedded VAE's: `plan_extract` computes the output's identity from the converted
tensors before anything is written and refuses a conversion that would change it.

`ExtractPlan.execute` streams one tensor at a time into a temporary file in the target folder (the
safetensors header is written first: its offsets follow from dtypes and shapes alone) and renames it over
OUT, so OUT is either absent, the old file, or the complete new one. See docs/dedupe-extract.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

import numpy as np

from vaereg._fs import temp_beside
from vaereg.errors import ExtractError, FileProblem, internal_error
from vaereg.identity.analyze import open_model
from vaereg.identity.digest import compute_identity
from vaereg.identity.dtypes import DTYPE_BITS, FLOAT_DTYPES, FP16_MAX, PACKED_FLOATS
from vaereg.identity.locate import CanonicalVae, complete_mapping
from vaereg.identity.report import VaeIdentity
from vaereg.identity.values import widen_float32
from vaereg.plugin.types import TensorInfo

if TYPE_CHECKING:
    from vaereg.plugin.manager import Plugins

Dtype = Literal["fp16", "fp32", "keep"]
DTYPES: tuple[str, ...] = ("fp16", "fp32", "keep")
_TARGET = {"fp16": "F16", "fp32": "F32"}
#: Sub-byte floats have no element-wise view to convert through: they are written as stored.


def output_dtype(stored: str, dtype: Dtype) -> str:
    """The dtype a tensor is written in: floats converted, integers and packed floats as stored."""
    if dtype == "keep" or stored not in FLOAT_DTYPES or stored in PACKED_FLOATS:
        return stored
    return _TARGET[dtype]


def convert(stored: str, raw: bytes | memoryview, target: str) -> tuple[bytes | memoryview, int]:
    """`raw` (little-endian, dtype `stored`) as `target`, rounding to nearest even; and how many finite
    values became infinite (values beyond the target's range)."""
    if target == stored:
        return raw, 0
    # Widening bf16/f8/f16 to f32 is exact, so converting from there rounds once, as the id does.
    wide = widen_float32(stored, raw)
    if wide is None:
        raise ExtractError(f"cannot convert {stored} to {target}")
    with np.errstate(over="ignore"):
        out = wide.astype("<f2" if target == "F16" else "<f4")
    overflow = int(np.count_nonzero(np.isinf(out)) - np.count_nonzero(np.isinf(wide)))
    return out.data.cast("B"), overflow  # a byte view: its len() is the byte count, as for `raw`


@dataclass(frozen=True)
class OutputTensor:
    """One tensor of the output: its canonical name and shape, written dtype, and where its bytes lie."""

    name: str
    stored_dtype: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class ExtractResult:
    """What `ExtractPlan.execute` wrote."""

    source: str
    output: str
    dtype: str
    size: int
    identity: VaeIdentity
    source_exact_id: str
    warnings: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "output": self.output,
            "dtype": self.dtype,
            "size": self.size,
            "id": self.identity.id,
            "exact_id": self.identity.exact_id,
            "source_exact_id": self.source_exact_id,
            "family": self.identity.family,
            "tensors": self.identity.tensors,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class ExtractPlan:
    """What extract would write. Nothing has been written; `execute` writes, unless `problems` says no."""

    source: Path
    output: Path
    dtype: Dtype
    force: bool
    #: the file holding the weights (a folder model's weights file, else `source`) as it was when planned
    weights_file: Path
    weights_size: int
    weights_mtime_ns: int
    source_identity: VaeIdentity
    output_identity: VaeIdentity
    tensors: tuple[OutputTensor, ...]
    metadata: dict[str, str]
    warnings: tuple[str, ...]
    #: reasons `execute` refuses (OUT exists, a changed id, fp16 overflow); empty when it may go ahead
    problems: tuple[str, ...]
    plugins: Plugins = field(repr=False, compare=False)

    @property
    def size(self) -> int:
        """Bytes of the file to be written."""
        return len(self.header()) + (self.tensors[-1].end if self.tensors else 0)

    def header(self) -> bytes:
        """The safetensors header: 8-byte little-endian length, then JSON padded with spaces to 8 bytes."""
        entries: dict[str, Any] = {"__metadata__": self.metadata}
        for t in self.tensors:
            entries[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [t.begin, t.end]}
        body = json.dumps(entries, separators=(",", ":")).encode()
        body += b" " * (-len(body) % 8)
        return struct.pack("<Q", len(body)) + body

    def execute(self, *, on_progress: Callable[[int, int], None] | None = None) -> ExtractResult:
        """Write OUT. Raises ExtractError when a problem stands or the source changed since planning.
        `on_progress(bytes_written, size)` hears of each tensor written."""
        if self.problems:
            raise ExtractError("; ".join(self.problems))
        st = os.stat(self.weights_file)
        if (st.st_size, st.st_mtime_ns) != (self.weights_size, self.weights_mtime_ns):
            raise ExtractError(f"{self.weights_file} changed since planning: plan again")
        with temp_beside(self.output) as temp:
            # 0o666 and O_EXCL: the umask decides the mode, as for any new file; no stale temp is reused.
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            with os.fdopen(fd, "wb") as out, open_model(self.source, self.plugins) as model:
                out.write(self.header())
                for t in self.tensors:
                    data, _ = convert(t.stored_dtype, model.read(t.name), t.dtype)
                    if len(data) != t.end - t.begin:
                        raise ExtractError(f"tensor {t.name}: {len(data)} bytes, expected {t.end - t.begin}")
                    out.write(data)
                    if on_progress:
                        on_progress(t.end, self.tensors[-1].end)
                out.flush()
                os.fsync(out.fileno())
            _publish(Path(temp), self.output, self.force)
        return ExtractResult(
            source=str(self.source),
            output=str(self.output),
            dtype=self.dtype,
            size=self.size,
            identity=self.output_identity,
            source_exact_id=self.source_identity.exact_id,
            warnings=self.warnings,
        )


def _publish(temp: Path, output: Path, force: bool) -> None:
    """Move the finished file to OUT. Without `force` a link, which fails rather than replace a file that
    appeared meanwhile; where links are not supported, a last check and a rename."""
    if force:
        os.replace(temp, output)
        return
    try:
        os.link(temp, output)
    except FileExistsError:
        raise ExtractError(f"{output} exists (it appeared while writing): use --force to replace it") from None
    except OSError:
        if os.path.lexists(output):
            raise ExtractError(f"{output} exists: use --force to replace it") from None
        os.replace(temp, output)
    else:
        os.unlink(temp)


def _layout(tensors: dict[str, TensorInfo], dtype: Dtype) -> tuple[OutputTensor, ...]:
    """Output tensors in file order: wider elements first, so every tensor starts aligned to its element
    size (what safetensors' own writer does), then by name."""
    order = sorted(tensors.values(), key=lambda i: (-DTYPE_BITS[output_dtype(i.dtype, dtype)], i.name))
    placed = []
    offset = 0
    for info in order:
        target = output_dtype(info.dtype, dtype)
        size = TensorInfo(info.name, target, info.shape).nbytes
        placed.append(OutputTensor(info.name, info.dtype, target, info.shape, offset, offset + size))
        offset += size
    return tuple(placed)


#: Endings launchers read as pickles (torch.load): a safetensors body under one of them fails to load.
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")


def output_problems(model: Path | str, out: Path | str, force: bool) -> list[str]:
    """Why OUT cannot be written, knowable before reading the model (the CLI asks first): it exists (without
    `force`), is the model, lies in no folder, or has a pickle's ending for a safetensors file."""
    model, out = Path(model), Path(out)
    found = []
    if out.exists() and model.exists() and os.path.samefile(model, out):
        found.append(f"{out} is the model itself")
    elif out.exists() and not force:
        found.append(f"{out} exists: use --force to replace it")
    if not out.parent.is_dir():
        found.append(f"{out.parent} is not a folder")
    if out.suffix.lower() in PICKLE_SUFFIXES:
        found.append(
            f"{out} would hold a safetensors file under a pickle's name ({out.suffix}): launchers would"
            f" torch.load it and fail; name it {out.stem}.safetensors"
        )
    return found


def output_warnings(out: Path | str) -> list[str]:
    out = Path(out)
    if out.suffix.lower() not in (*SAFETENSORS_SUFFIXES, *PICKLE_SUFFIXES):
        return [f"{out} does not end in .safetensors: launchers list VAE files by their ending"]
    return []


def plan_extract(
    model: Path | str,
    out: Path | str,
    dtype: Dtype = "fp16",
    *,
    plugins: Plugins | None = None,
    force: bool = False,
    source_sha256: str | None = None,
) -> ExtractPlan:
    """Plan writing the VAE of `model` to `out`. Reads the VAE's tensors (to identify source and output),
    writes nothing. Raises ExtractError when there is no VAE to extract, OSError when `model` is unreadable.

    `source_sha256`, when the caller knows it (the index), is recorded in the output's metadata.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if plugins is None:
        from vaereg.plugin.manager import Plugins

        plugins = Plugins()
    model, out = Path(model), Path(out)
    try:
        with open_model(model, plugins) as opened:
            if opened.vae is None:
                raise ExtractError(f"{model}: no VAE in it")
            weights = Path(getattr(opened.source, "weights_path", model))
            st = os.stat(weights)
            vae = opened.vae
            source_identity, _ = compute_identity(vae, opened.source.read)
            tensors = _layout(dict(vae.tensors), dtype)
            output_identity, overflow = _output_identity(
                vae, tensors, opened.read, source_identity, _written_layout(vae, plugins)
            )
    except (ExtractError, OSError):
        raise
    except FileProblem as exc:
        raise ExtractError(f"{model}: {exc}") from None
    except (ValueError, KeyError, IndexError) as exc:  # a plugin's data contradicted its own header
        raise ExtractError(f"{model}: unreadable: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a bug met reading the model: its one line, traceback logged
        logging.getLogger("vaereg.actions").error("%s: %s", model, internal_error(exc), exc_info=exc)
        raise ExtractError(f"{model}: {internal_error(exc)}") from None
    problems = output_problems(model, out, force)
    warnings = output_warnings(out)
    if overflow:
        where = ", ".join(f"{name} ({n})" for name, n in sorted(overflow.items()))
        limit = f"the fp16 range (|x| > {FP16_MAX:g})" if dtype == "fp16" else f"the {dtype} range"
        problems.append(f"values beyond {limit} would become infinite in {where}: use a wider --dtype or keep")
    if output_identity.id != source_identity.id:
        problems.append(
            f"as {dtype} the weights would no longer have the embedded VAE's id (double rounding):"
            " use --dtype fp16 or --dtype keep"
        )
    packed = sorted(t.name for t in tensors if t.stored_dtype in PACKED_FLOATS and dtype != "keep")
    if packed:
        warnings.append(f"{len(packed)} packed sub-byte tensors are written as stored: {', '.join(packed[:3])}")
    metadata = {
        "format": "pt",
        "vaereg.source": model.name,
        "vaereg.id": output_identity.id,
        "vaereg.exact_id": output_identity.exact_id,
        "vaereg.source_exact_id": source_identity.exact_id,
        "vaereg.family": output_identity.family,
    }
    if source_sha256:
        metadata["vaereg.source_sha256"] = source_sha256.lower()
    return ExtractPlan(
        source=model,
        output=out,
        dtype=dtype,
        force=force,
        weights_file=weights,
        weights_size=st.st_size,
        weights_mtime_ns=st.st_mtime_ns,
        source_identity=source_identity,
        output_identity=output_identity,
        tensors=tensors,
        metadata=metadata,
        warnings=tuple(warnings),
        problems=tuple(problems),
        plugins=plugins,
    )


def _written_layout(vae: CanonicalVae, plugins: Plugins) -> str:
    """The layout `vaereg hash` will see in the written file: the canonical names are their family's
    canonical layout (``ldm`` for the KL autoencoders, ``wan`` for Wan's...), native names stay native."""
    if vae.layout == "native":
        return "native"
    names = list(vae.tensors)
    mapping = plugins.map_layout(names)
    return mapping.layout if mapping is not None and complete_mapping(mapping, names) else "native"


def _output_identity(
    vae: CanonicalVae,
    tensors: tuple[OutputTensor, ...],
    read: Callable[[str], bytes | memoryview],
    source: VaeIdentity,
    layout: str,
) -> tuple[VaeIdentity, dict[str, int]]:
    """The identity the written file will have (what `vaereg hash` will say of it), and the overflow count
    per tensor. Computed over the converted tensors exactly as `execute` will write them."""
    if all(t.dtype == t.stored_dtype for t in tensors):  # nothing converted: the same values
        return dataclasses.replace(source, layout=layout, prefix=""), {}
    overflow: dict[str, int] = {}
    by_name = {t.name: t for t in tensors}

    def read_converted(name: str) -> bytes | memoryview:
        t = by_name[name]
        data, overflow[name] = convert(t.stored_dtype, read(name), t.dtype)
        return data

    written = CanonicalVae(
        prefix="",
        layout=layout,
        stored_key={t.name: t.name for t in tensors},
        tensors={t.name: TensorInfo(t.name, t.dtype, t.shape) for t in tensors},
        family=vae.family,
        latent_channels=vae.latent_channels,
    )
    identity, _ = compute_identity(written, read_converted)
    return identity, {name: n for name, n in overflow.items() if n}
