"""A VAE as a network it can run: its canonical tensors into diffusers' ``AutoencoderKL``, and one round trip.

The network is built the way diffusers builds one from a single file: an LDM ``ddconfig`` (read here from the
tensors' shapes) through ``create_vae_diffusers_config_from_ldm``, the weights through
``convert_ldm_vae_checkpoint``. vaereg's canonical names are the LDM names, so any file vaereg identifies runs
through that one door. Nothing is downloaded. Forward hooks record the largest absolute value each module
outputs, in the order they finish. torch, diffusers and Pillow (the ``decode`` extra) are imported inside
functions only.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from vaereg.errors import FileProblem, UserError
from vaereg.identity.dtypes import (
    FP16_MAX,  # an activation beyond it is inf in an fp16 decode
)

if TYPE_CHECKING:
    from PIL import Image

    from vaereg.identity.report import VaeIdentity
    from vaereg.plugin.manager import Plugins


#: Families diffusers' AutoencoderKL runs: the KL autoencoders (SD1/2/XL kl-f8-4ch, SD3/FLUX.1 kl-f8-16ch, ...).
_KL_FAMILY = re.compile(r"^kl-f(\d+)-(\d+)ch$")

#: Every KL VAE normalises with 32 groups (LDM's ``Normalize``; diffusers' ``norm_num_groups`` default).
NORM_GROUPS = 32


class DecodeUnavailable(UserError):
    """torch, diffusers or Pillow is not installed: the one line says how to get them."""

    def __init__(self, command: str = "vaereg preview") -> None:
        super().__init__(f"{command} needs the decode extra: pip install 'vaereg[decode]'")


class NotRunnable(FileProblem):
    """A VAE vaereg can identify but not run (another family, or a file without a VAE). One line, no path."""


def require_extra(command: str = "vaereg preview") -> None:
    """Raise DecodeUnavailable unless torch, diffusers and Pillow import."""
    try:
        import diffusers  # noqa: F401
        import PIL  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise DecodeUnavailable(command) from None


def device() -> str:
    """The device decodes run on: the GPU when torch sees one, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# --- from canonical tensors to a network ---------------------------------------------------------------


@dataclass
class LoadedVae:
    """A VAE read from a file: its identity and its canonical (LDM-named) tensors as float32 arrays."""

    path: Path
    identity: VaeIdentity
    tensors: dict[str, np.ndarray] = field(repr=False)


def runnable(family: str, layout: str) -> str | None:
    """Why a VAE of `family` cannot run, or None when it can."""
    if layout == "native" or not _KL_FAMILY.match(family):
        return f"no runnable network for family {family}: decoding runs the KL autoencoders (diffusers AutoencoderKL)"
    return None


def read_vae(path: Path, plugins: Plugins) -> LoadedVae:
    """Identify the VAE in `path` and read its tensors widened to float32 (two passes over the VAE's tensors
    only: identity, then values). Raises NotRunnable, ModelFormatError or OSError."""
    from vaereg.identity.analyze import open_model
    from vaereg.identity.digest import compute_identity
    from vaereg.identity.values import widen_float32

    with open_model(Path(path), plugins) as model:
        vae = model.vae
        if vae is None:
            raise NotRunnable("no VAE in it")
        why = runnable(vae.family, vae.layout)
        if why:
            raise NotRunnable(why)
        identity, _ = compute_identity(vae, model.source.read, read_into=getattr(model.source, "read_into", None))
        tensors = {}
        for name, info in vae.tensors.items():
            wide = widen_float32(info.dtype, model.read(name))
            if wide is None:
                raise NotRunnable(f"tensor {name} is {info.dtype}: only float tensors can run")
            # A copy: the read buffer may be a view of a mapped file that closes with the model.
            tensors[name] = np.array(wide, dtype=np.float32).reshape(info.shape)
    return LoadedVae(Path(path), identity, tensors)


def ldm_ddconfig(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """The LDM ``ddconfig`` (``ch``, ``ch_mult``, ``num_res_blocks``, ...) the tensors were made with."""
    ch = shapes["encoder.conv_in.weight"][0]
    levels = sorted({int(n.split(".")[2]) for n in shapes if n.startswith("encoder.down.")})
    blocks = {int(n.split(".")[4]) for n in shapes if n.startswith("encoder.down.0.block.")}
    ch_mult = [shapes[f"encoder.down.{i}.block.0.conv1.weight"][0] // ch for i in levels]
    if ch_mult[0] != 1:  # LDM widens inside the first level; diffusers' conv_in already gives its width
        raise NotRunnable(f"the first level widens the channels ({ch} to {ch * ch_mult[0]}): AutoencoderKL cannot")
    widths = [ch, *(ch * m for m in ch_mult)]
    if any(w % NORM_GROUPS for w in widths):
        raise NotRunnable(f"channel counts {sorted(set(widths))} are not multiples of the {NORM_GROUPS} norm groups")
    return {
        "double_z": True,
        "z_channels": shapes["decoder.conv_in.weight"][1],
        "resolution": 256,
        "in_channels": shapes["encoder.conv_in.weight"][1],
        "out_ch": shapes["decoder.conv_out.weight"][0],
        "ch": ch,
        "ch_mult": ch_mult,
        "num_res_blocks": len(blocks),
        "attn_resolutions": [],
        "dropout": 0.0,
    }


@dataclass
class Network:
    """An AutoencoderKL ready to run, and the LDM name of each of its modules (for reporting layers)."""

    model: Any  # diffusers.AutoencoderKL
    ldm_names: dict[str, str]
    device: str


def build_network(tensors: Mapping[str, np.ndarray], on: str | None = None) -> Network:
    """An ``AutoencoderKL`` holding `tensors` (canonical LDM names), through diffusers' own converters."""
    import torch
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import (
        convert_ldm_vae_checkpoint,
        create_vae_diffusers_config_from_ldm,
    )

    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    ddconfig = ldm_ddconfig(shapes)
    checkpoint = {name: torch.from_numpy(t) for name, t in tensors.items()}
    original = {"model": {"params": {"first_stage_config": {"params": {"ddconfig": ddconfig}}}}}
    # scaling_factor fills a config field the round trip never reads (latents are not scaled here).
    config = create_vae_diffusers_config_from_ldm(original, checkpoint, scaling_factor=1.0)
    # SD3/FLUX.1 VAEs have no quant convolutions; the LDM ddconfig has no field for that, the shapes tell.
    config["use_quant_conv"] = "quant_conv.weight" in tensors
    config["use_post_quant_conv"] = "post_quant_conv.weight" in tensors
    config["mid_block_add_attention"] = "encoder.mid.attn_1.q.weight" in tensors
    converted = convert_ldm_vae_checkpoint(checkpoint, config)
    ldm_of = _ldm_names(checkpoint, converted)
    with torch.device("meta"):
        model = AutoencoderKL(**config)
    try:
        model.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as exc:  # a tensor the structure does not have, or one it misses
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:2])
        raise NotRunnable(f"its tensors do not fit AutoencoderKL: {detail[:200]}") from None
    on = on or device()
    model = model.to(on).eval()
    return Network(model, _module_names(model, ldm_of), on)


def _ldm_names(checkpoint: Mapping[str, Any], converted: Mapping[str, Any]) -> dict[str, str]:
    """diffusers key -> LDM key. The converter renames and takes views, never copies: the storage says."""
    by_storage = {(t.untyped_storage().data_ptr(), t.storage_offset()): name for name, t in checkpoint.items()}
    names = {}
    for key, tensor in converted.items():
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if where in by_storage:
            names[key] = by_storage[where]
    return names


def _module_names(model: Any, ldm_of: Mapping[str, str]) -> dict[str, str]:
    """diffusers module name -> the LDM name of the same layer: from its own parameters, or, for a block,
    the longest dotted prefix its parameters share (``decoder.up.3.block.1``)."""
    names: dict[str, str] = {}
    for module_name, module in model.named_modules():  # parents come before their children
        if not module_name:
            continue
        ldm = [ldm_of.get(f"{module_name}.{p}") for p, _ in module.named_parameters()]
        ldm = [n.rsplit(".", 1)[0] for n in ldm if n]
        if not ldm:  # a parameterless layer (activation, dropout): named under its parent
            parent, _, own = module_name.rpartition(".")
            names[module_name] = f"{names[parent]}.{own}" if parent in names else module_name
            continue
        parts = [n.split(".") for n in ldm]
        common = []
        for column in zip(*parts):
            if len(set(column)) != 1:
                break
            common.append(column[0])
        names[module_name] = ".".join(common) or module_name
    return names


# --- a round trip ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Activation:
    """The largest absolute value one layer output (NaN when the layer output NaN)."""

    layer: str
    value: float

    def __str__(self) -> str:
        return f"{self.value:.3g} at {self.layer}"

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "value": None if math.isnan(self.value) else self.value}


class ActivationProbe:
    """Forward hooks on every module of a network: the largest |output| of each, in the order they finish."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.seen: list[Activation] = []
        self._handles = []

    def __enter__(self) -> ActivationProbe:
        for name, module in self.network.model.named_modules():
            if name:
                self._handles.append(module.register_forward_hook(self._hook(self.network.ldm_names.get(name, name))))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, layer: str) -> Callable[..., None]:
        import torch

        def hook(module: Any, inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel():
                self.seen.append(Activation(layer, float(out.detach().abs().amax())))

        return hook

    def reset(self) -> None:
        self.seen = []

    def peak(self) -> Activation | None:
        """The largest activation (a NaN counts as the largest)."""
        return max(self.seen, key=lambda a: math.inf if math.isnan(a.value) else a.value, default=None)

    def first_over(self, limit: float = FP16_MAX) -> Activation | None:
        """The first layer (in execution order) whose output passes `limit` (or is NaN)."""
        return next((a for a in self.seen if not a.value <= limit), None)


@dataclass(frozen=True)
class Pass:
    """One half of a round trip: what the hooks saw."""

    peak: Activation | None
    first_fp16_overflow: Activation | None
    seconds: float


def image_tensor(image: Image.Image, on: str) -> Any:
    """A PIL image as the 1x3xHxW float32 tensor in [-1, 1] a VAE takes."""
    import torch

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None].to(on)


def tensor_image(sample: Any) -> Image.Image:
    """A decoded 1x3xHxW tensor in [-1, 1] as an 8-bit PIL image (clamped, rounded)."""
    from PIL import Image

    pixels = ((sample[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(pixels, "RGB")


def encode(network: Network, image: Image.Image) -> tuple[Any, Pass]:
    """The latent of `image` (the posterior's mode) and what the encoder's layers output."""
    import torch

    start = time.perf_counter()
    with torch.inference_mode(), ActivationProbe(network) as probe:
        latent = network.model.encode(image_tensor(image, network.device)).latent_dist.mode()
    return latent, Pass(probe.peak(), probe.first_over(), time.perf_counter() - start)


def decode(network: Network, latent: Any) -> tuple[Image.Image, Pass]:
    """The image the decoder makes of `latent`, and what its layers output."""
    import torch

    start = time.perf_counter()
    with torch.inference_mode(), ActivationProbe(network) as probe:
        sample = network.model.decode(latent.to(network.device)).sample
    return tensor_image(sample), Pass(probe.peak(), probe.first_over(), time.perf_counter() - start)
