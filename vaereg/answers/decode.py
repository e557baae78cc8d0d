"""Run a VAE: its canonical tensors as a network of a well-kept library, a round trip, what it measures.

The network is diffusers' ``AutoencoderKL``, built the way diffusers builds one from a single file: an LDM
``ddconfig`` (read here from the tensors' shapes) through ``create_vae_diffusers_config_from_ldm``, the
weights through ``convert_ldm_vae_checkpoint``. vaereg's canonical names are the LDM names, so any file vaereg
identifies - .safetensors, .ckpt, a diffusers folder, a checkpoint with its VAE inside, fp16/bf16/fp8 - runs
through that one door. Nothing is downloaded; the network is built on the meta device and the weights are
assigned, not copied.

The round trip is deterministic: the encoder's posterior mode (no sampling), decoded in float32. Forward
hooks on every module record the largest absolute value each one outputs, in the order they finish: the
first over fp16's largest finite value (65504) is where an fp16 decode turns to inf and then NaN.

torch, diffusers and Pillow are the ``decode`` extra: imported inside functions only, never at CLI start-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from vaereg.answers.network import (
    Activation,
    NotRunnable,
    Pass,
    build_network,
    decode,
    device,
    encode,
    read_vae,
    require_extra,
)
from vaereg.errors import UserError
from vaereg.identity.dtypes import FP16_MAX

if TYPE_CHECKING:
    from PIL import Image

    from vaereg.identity.report import VaeIdentity
    from vaereg.plugin.manager import Plugins


# --- figures --------------------------------------------------------------------------------------------


#: Saturation and contrast are measured on 8x8 block means (the latent grid of a kl-f8 VAE): tone and
#: colour, not fine detail, which PSNR already covers and which every VAE loses some of.
BLOCK = 8


@dataclass(frozen=True)
class Figures:
    """Of one image, on its BLOCK x BLOCK means: mean HSV saturation and RMS contrast (standard deviation of
    Rec. 601 luma), both in [0, 1]."""

    saturation: float
    contrast: float


def figures(image: Image.Image, block: int = BLOCK) -> Figures:
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    h, w = rgb.shape[0] // block * block, rgb.shape[1] // block * block
    rgb = rgb[:h, :w].reshape(h // block, block, w // block, block, 3).mean(axis=(1, 3))
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    saturation = np.where(high > 0, (high - low) / np.where(high > 0, high, 1), 0.0)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    return Figures(float(saturation.mean()), float(luma.std()))


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio of two 8-bit images in dB (inf when identical)."""
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ratio(value: float, reference: float) -> float:
    return value / reference if reference > 0 else math.inf


# --- preview: many VAEs, one input ------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundTrip:
    """One VAE's decode of the shared input, with its figures."""

    path: str
    label: str
    identity: VaeIdentity
    image: Image.Image = field(repr=False, compare=False)
    psnr: float
    saturation: float  # relative to the input's (1.0: the same)
    contrast: float  # relative to the input's
    encoder: Pass  # shared by the VAEs with this encoder_id: `encoded` says whether this one ran it
    decoder: Pass
    device: str
    encoded: bool = True

    @property
    def peak(self) -> Activation | None:
        peaks = [p.peak for p in (self.encoder, self.decoder) if p.peak is not None]
        return max(peaks, key=lambda a: math.inf if math.isnan(a.value) else a.value, default=None)

    @property
    def fp16_overflow(self) -> Activation | None:
        """The first layer over fp16's range: the encoder's when it overflows, else the decoder's."""
        return self.encoder.first_fp16_overflow or self.decoder.first_fp16_overflow

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "label": self.label,
            "id": self.identity.id,
            "encoder_id": self.identity.encoder_id,
            "decoder_id": self.identity.decoder_id,
            "family": self.identity.family,
            "psnr": None if math.isinf(self.psnr) else round(self.psnr, 3),
            "saturation": round(self.saturation, 4),
            "contrast": round(self.contrast, 4),
            "max_activation": self.peak.to_json() if self.peak else None,
            "fp16_overflow": self.fp16_overflow.to_json() if self.fp16_overflow else None,
            "encoded": self.encoded,
            "encode_seconds": round(self.encoder.seconds, 3) if self.encoded else 0.0,
            "decode_seconds": round(self.decoder.seconds, 3),
            "device": self.device,
        }


@dataclass(frozen=True)
class Failure:
    """A VAE that could not be run: the path and a one-line reason."""

    path: str
    label: str
    reason: str


@dataclass(frozen=True)
class Wanted:
    """A VAE to decode with: where it is and what to call it on the sheet."""

    path: Path
    label: str


#: The largest side a round trip is run at: SDXL's own size. Memory grows with the pixels: `preview` of the
#: chart with a ch=128 kl-f8 VAE (float32, CPU) peaked at 1.1 GB RSS at 512 px and 3.1 GB at 1024 (a
#: full-size SD VAE: 1.7 GB at 512, docs/benchmarks.md); 2048 px would take about 9 GB, 100000 px terabytes.
MAX_SIZE = 1024


def check_size(size: int) -> None:
    """ValueError (one line) unless `size` is a side a round trip can run at: a multiple of 8 (the latent
    grid) from 64 to `MAX_SIZE`."""
    if not 64 <= size <= MAX_SIZE or size % 8:
        raise ValueError(f"--size {size}: use a multiple of 8 from 64 to {MAX_SIZE}")


def prepare_image(image: Image.Image | None, size: int) -> Image.Image:
    """The input at `size` x `size` (a multiple of 8): the built-in chart, or the image centre-cropped
    to a square and resized."""
    from PIL import Image as PILImage

    from vaereg.answers.testchart import test_chart

    check_size(size)
    if image is None:
        return test_chart(size)
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), PILImage.Resampling.LANCZOS)


def round_trips(
    wanted: Sequence[Wanted],
    image: Image.Image,
    plugins: Plugins,
    *,
    on: str | None = None,
    progress: Callable[[int, int, RoundTrip | Failure], None] | None = None,
) -> list[RoundTrip | Failure]:
    """Decode `image` with every VAE of `wanted`, in order. The image is encoded once per distinct
    `encoder_id` (by the first VAE that has it); one network is in memory at a time."""
    from vaereg.errors import ModelFormatError

    on = on or device()
    latents: dict[str, tuple[Any, Pass]] = {}
    reference = figures(image)
    results: list[RoundTrip | Failure] = []
    for n, want in enumerate(wanted, 1):
        try:
            loaded = read_vae(want.path, plugins)
            network = build_network(loaded.tensors, on)
            del loaded.tensors  # the network holds them now
            encoder_id = loaded.identity.encoder_id
            fresh = encoder_id not in latents
            if fresh:
                latents[encoder_id] = encode(network, image)
            latent, encoded = latents[encoder_id]
            decoded, decoder_pass = decode(network, latent)
            del network
            got = figures(decoded)
            result: RoundTrip | Failure = RoundTrip(
                path=str(want.path),
                label=want.label,
                identity=loaded.identity,
                image=decoded,
                psnr=psnr(image, decoded),
                saturation=ratio(got.saturation, reference.saturation),
                contrast=ratio(got.contrast, reference.contrast),
                encoder=encoded,
                decoder=decoder_pass,
                device=on,
                encoded=fresh,
            )
        except (NotRunnable, ModelFormatError) as exc:
            result = Failure(str(want.path), want.label, str(exc))
        except FileNotFoundError:
            result = Failure(str(want.path), want.label, "no such file or directory")
        except OSError as exc:
            result = Failure(str(want.path), want.label, exc.strerror.lower() if exc.strerror else str(exc))
        except (ValueError, KeyError, IndexError) as exc:  # a plugin's data contradicted its own header
            result = Failure(str(want.path), want.label, f"unreadable: {exc}")
        results.append(result)
        if progress:
            progress(n, len(wanted), result)
    return results


# --- check --decode: is the embedded VAE fit, measured ------------------------------------------------------

#: Washed out: saturation or contrast of the round trip below this fraction of the input's ...
WASHED_OUT_VS_INPUT = 0.80
#: ... and below this fraction of the closest known VAE's decode of the same latent (docs/check.md: calibration).
WASHED_OUT_VS_KNOWN = 0.85


#: Fields of a round trip's JSON that `check` already gives for the embedded VAE.
_IDENTITY_FIELDS = ("path", "label", "id", "encoder_id", "decoder_id", "family")


@dataclass(frozen=True)
class DecodeFindings:
    """What ``check --decode`` measured: the round trip, fp16 overflow, washed out, and notes."""

    trip: RoundTrip
    reference: RoundTrip | None  # the closest known VAE, decoding the same latent
    washed_out: bool
    problems: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def fp16_overflow(self) -> Activation | None:
        return self.trip.fp16_overflow

    def to_json(self) -> dict[str, Any]:
        ref = self.reference
        return {
            **{k: v for k, v in self.trip.to_json().items() if k not in _IDENTITY_FIELDS},
            "washed_out": self.washed_out,
            "reference": None if ref is None else {
                "id": ref.identity.id,
                "label": ref.label,
                "path": ref.path,
                "saturation": round(ref.saturation, 4),
                "contrast": round(ref.contrast, 4),
            },
            "problems": list(self.problems),
            "notes": list(self.notes),
        }


def washed_out(trip: RoundTrip, reference: RoundTrip | None) -> bool:
    """Far below the input in saturation or contrast, and (when a known VAE ran) below it too."""
    own = min(trip.saturation, trip.contrast)
    if own >= WASHED_OUT_VS_INPUT:
        return False
    if reference is None:
        return True
    against = min(ratio(trip.saturation, reference.saturation), ratio(trip.contrast, reference.contrast))
    return against < WASHED_OUT_VS_KNOWN


def decode_check(
    model: Path,
    references: Iterable[Wanted],
    *,
    plugins: Plugins,
    flags: Sequence[str] = (),
    image: Image.Image | None = None,
    size: int = 256,
    on: str | None = None,
) -> DecodeFindings:
    """The round trip of the VAE in `model`, against the first runnable of `references` (the closest known
    VAEs, best first). Raises NotRunnable (with the reason) when the embedded VAE cannot run."""
    require_extra("vaereg check --decode")
    on = on or device()
    chart = prepare_image(image, size)
    [own] = round_trips([Wanted(Path(model), Path(model).name)], chart, plugins, on=on)
    if isinstance(own, Failure):
        raise NotRunnable(own.reason)
    reference = None
    for ref in references:
        # The known VAE's own round trip of the same input: for one sharing the encoder (the usual relation),
        # its decode of the very same latent.
        [tried] = round_trips([ref], chart, plugins, on=on)
        if isinstance(tried, RoundTrip):
            reference = tried
            break
    problems, notes = [], []
    overflow = own.fp16_overflow
    flagged = "fp16-nan-prone" in flags
    if overflow is not None:
        problems.append(
            f"fp16-overflow: {overflow} (fp16 holds {FP16_MAX:g}): decode in fp32/bf16 or use a fixed VAE"
        )
        if not flagged:
            notes.append("measured fp16 overflow, but the registry does not flag it fp16-nan-prone")
    elif flagged:
        peak = own.peak
        notes.append(
            f"the registry flags it fp16-nan-prone, but this {size} px round trip peaks at {peak} (below {FP16_MAX:g})"
            if peak else "the registry flags it fp16-nan-prone; the round trip did not measure it"
        )
    if reference is not None and reference.fp16_overflow is not None:
        notes.append(f"{reference.label}, the closest known VAE, passes fp16's range too: {reference.fp16_overflow}")
    faded = washed_out(own, reference)
    if faded:
        what = f"saturation {own.saturation:.2f}x, contrast {own.contrast:.2f}x of the input"
        if reference is not None:
            what += (
                f"; {ratio(own.saturation, reference.saturation):.2f}x / {ratio(own.contrast, reference.contrast):.2f}x"
                f" of {reference.label}'s"
            )
        problems.append(f"washed-out: {what}")
    return DecodeFindings(own, reference, faded, tuple(problems), tuple(notes))



# --- which VAEs: files, ids, names, a family ------------------------------------------------------------


class UnknownVae(UserError, LookupError):
    """A VAE argument that is neither a file nor an id, hash or name the index and registry know."""


def _copy_path(copies: Sequence[Any]) -> str | None:
    """The copy to read a VAE from: a standalone file first (smaller to read), one that still exists."""
    import os

    usable = [c for c in copies if not c.error and os.path.exists(c.path)]
    usable.sort(key=lambda c: (c.embedded, c.path))
    return usable[0].path if usable else None


def wanted_from(queries: Sequence[str], family: str | None, catalog: Any) -> list[Wanted]:
    """The VAEs a user named: paths as given, else an id/hash (prefix) or a registry name, slug or alias
    looked up in `catalog` (None when there is no index); then every indexed VAE of `family`. Raises
    UnknownVae for a query nothing matches."""
    import os

    wanted: list[Wanted] = []
    summaries = None
    for query in queries:
        if os.path.exists(query):
            wanted.append(Wanted(Path(query), Path(query).name))
            continue
        if catalog is None:
            raise UnknownVae(f"{query}: no such file (and no index to look a name or id up in: run `vaereg scan`)")
        label, copies = None, ()
        try:
            match = catalog.one(query)
            label, copies = match.name, match.copies
        except (LookupError, ValueError):  # not a hash, or no hash matches: try names
            summaries = summaries if summaries is not None else catalog.distinct_vaes()
            key = query.casefold()
            named = [s for s in summaries if key in {n.casefold() for n in (s.name, s.slug, *s.aliases) if n}]
            if len(named) != 1:
                who = "several VAEs have" if named else "nothing has"
                raise UnknownVae(f"{query}: no such file, and {who} that id, hash or name") from None
            label, copies = named[0].name, named[0].copies
        path = _copy_path(copies)
        if path is None:
            raise UnknownVae(f"{query}: no readable copy of it is indexed on this machine")
        wanted.append(Wanted(Path(path), label or Path(path).name))
    if family:
        if catalog is None:
            raise UnknownVae(f"--family {family}: no index to list VAEs from (run `vaereg scan`)")
        found = [s for s in catalog.distinct_vaes() if s.family == family]
        if not found:
            raise UnknownVae(f"--family {family}: the index holds no VAE of that family")
        for summary in found:
            path = _copy_path(summary.copies)
            if path is not None:
                wanted.append(Wanted(Path(path), summary.name or Path(path).name))
    return wanted


def checker(
    plugins: Plugins, warn: Callable[[str], None], size: int = 256
) -> Callable[[Path, Sequence[Any], tuple[str, ...]], DecodeFindings | None]:
    """The `decode` step ``check_model`` takes: known VAEs (``KnownVae``, closest first) become references
    by their first standalone copy; a VAE that cannot run is a warning, and the check goes on without it."""

    def run(model: Path, known: Sequence[Any], flags: tuple[str, ...]) -> DecodeFindings | None:
        references = [Wanted(Path(k.paths[0]), k.label) for k in known if k.paths]
        try:
            return decode_check(model, references, plugins=plugins, flags=flags, size=size)
        except NotRunnable as exc:
            warn(f"{model}: not decoded: {exc}")
            return None

    return run
