"""`vaereg preview` / `check --decode` costs, and the calibration of the washed-out threshold.

1. Speed and memory: a full-size SD VAE (kl-f8-4ch, ch=128, 83.65M parameters, fp32 .safetensors, random
   weights: the cost does not depend on the values) and a full-size kl-f8-16ch (SD3/FLUX.1 shapes), each round
   tripped on the built-in chart at --sizes, in a fresh process per run so peak RSS is that run's alone.
   Reported: seconds to identify + read + build the network, to encode, to decode; peak RSS of the process.
2. Calibration (--calibrate): the hand-set decodable test VAE (tests/decodable.py) and variants of it, at
   256 px on the chart: saturation and contrast of each round trip relative to the input and to the
   original's round trip, and whether `washed_out` flags it.

Usage: python bench/bench_decode.py [--sizes 256 512] [--calibrate] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import factory  # noqa: E402


def _child(path: str, size: int) -> None:
    import resource
    import time

    import torch  # noqa: F401  (imported before timing: the CLI pays it once per run, not per VAE)

    from vaereg.answers import decode as dec
    from vaereg.answers import network as net
    from vaereg.plugin.manager import Plugins

    plugins = Plugins()
    image = dec.prepare_image(None, size)
    start = time.perf_counter()
    loaded = net.read_vae(Path(path), plugins)
    network = net.build_network(loaded.tensors, "cpu")
    del loaded
    built = time.perf_counter() - start
    latent, encoded = net.encode(network, image)
    _, decoded = net.decode(network, latent)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"build": built, "encode": encoded.seconds, "decode": decoded.seconds, "rss_mb": peak_kb / 1024}))


def speed(folder: Path, sizes: list[int]) -> None:
    files = {
        "kl-f8-4ch (SD1/SD2/SDXL shapes)": factory.make_vae(ch=128),
        "kl-f8-16ch (SD3/FLUX.1 shapes)": factory.make_vae(ch=128, z=16, quant=False),
    }
    print("| VAE | size | identify + read + build | encode | decode | peak RSS |")
    print("|---|---|---|---|---|---|")
    for label, sd in files.items():
        path = factory.save_safetensors(sd, folder / f"{label.split()[0]}.safetensors")
        del sd
        for size in sizes:
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(path), str(size)], capture_output=True, text=True, check=True
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"| {label} | {size} px | {r['build']:.2f} s | {r['encode']:.2f} s | {r['decode']:.2f} s | {r['rss_mb']:.0f} MB |")


def calibrate(folder: Path, size: int = 256) -> None:
    import decodable
    import ml_dtypes

    from vaereg.answers import decode as dec
    from vaereg.plugin.manager import Plugins

    base = decodable.make_decodable_vae(seed=0)
    rng = np.random.default_rng(99)
    unrelated = {k: (rng.standard_normal(v.shape) * 0.05).astype(np.float32) for k, v in base.items()}

    def merge(weight: float) -> dict:
        return {k: (weight * v + (1 - weight) * unrelated[k]).astype(np.float32) if k.startswith(("decoder.", "post_quant")) else v for k, v in base.items()}

    def noisy(rel: float, seed: int) -> dict:
        r = np.random.default_rng(seed)
        return {k: (v + r.standard_normal(v.shape).astype(np.float32) * rel * (np.abs(v).mean() + 1e-8)).astype(np.float32) for k, v in base.items()}

    variants = {
        "original": base,
        "other seed (1)": decodable.make_decodable_vae(seed=1),
        "other seed (2)": decodable.make_decodable_vae(seed=2),
        "fp16 copy": {k: v.astype(np.float16) for k, v in base.items()},
        "bf16 copy": {k: v.astype(ml_dtypes.bfloat16) for k, v in base.items()},
        "every weight moved by 2% (noise)": noisy(0.02, 1),
        "every weight moved by 5% (noise)": noisy(0.05, 2),
        **{f"conv_out pulled to grey by {s:.0%}": decodable.washed_out(base, s) for s in (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)},
        **{f"decoder merged {w:.0%} with an unrelated one": merge(w) for w in (0.9, 0.7, 0.5)},
    }
    wanted = []
    for i, (label, sd) in enumerate(variants.items()):
        path = folder / f"variant{i}.safetensors"
        if any(v.dtype == ml_dtypes.bfloat16 for v in sd.values()):
            import torch
            from safetensors.torch import save_file

            save_file({k: torch.from_numpy(v.view(np.uint16)).view(torch.bfloat16) for k, v in sd.items()}, str(path))
        else:
            factory.save_safetensors(sd, path)
        wanted.append(dec.Wanted(path, label))
    image = dec.prepare_image(None, size)
    trips = dec.round_trips(wanted, image, Plugins(), on="cpu")
    original = trips[0]
    print(f"| variant ({size} px chart) | PSNR | saturation / contrast vs input | vs the original's | washed out |")
    print("|---|---|---|---|---|")
    for t in trips:
        vs = (dec.ratio(t.saturation, original.saturation), dec.ratio(t.contrast, original.contrast))
        print(
            f"| {t.label} | {t.psnr:.1f} dB | {t.saturation:.3f} / {t.contrast:.3f} | {vs[0]:.3f} / {vs[1]:.3f} |"
            f" {'yes' if dec.washed_out(t, original) else 'no'} |"
        )


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if args.calibrate:
            calibrate(Path(tmp))
        else:
            speed(Path(tmp), args.sizes)


if __name__ == "__main__":
    main()
