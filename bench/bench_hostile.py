"""What each hostile file of issue 11 costs one `vaereg hash` call: time, peak RSS, and the line it prints.

Builds every case of ``tests/hostile.py`` in a scratch folder, then runs ``vaereg hash --no-file-hashes CASE``
for each (a fresh process each run, under a 1 GiB address-space limit) and reports:

- per case: median wall time, peak RSS (from ``wait4``), exit status and the line printed;
- the pure-Python unpickler with the budgets against the same loop without them, on a torch.save
  checkpoint of 5,000 tensors (``data.pkl`` only), in process, best of 5 (CPU time).

Usage: python bench/bench_hostile.py [--dir bench/out/hostile] [--runs 3]
"""

from __future__ import annotations

import argparse
import io
import pickle
import shutil
import statistics
import sys
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import clirun  # noqa: E402
import hostile  # noqa: E402


def unpickle_overhead(folder: Path) -> tuple[float, float, int]:
    """CPU seconds to unpickle one data.pkl of 5,000 tensors without and with the budgets."""
    import torch

    from vaereg_plugins import torch_zip

    path = folder / "many.pt"
    torch.save({f"model.layer{i}.weight": torch.zeros(2, 2) for i in range(5000)}, path)
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        data = archive.read(name)

    class Unbudgeted(pickle._Unpickler):  # type: ignore[name-defined]
        find_class = torch_zip._RestrictedUnpickler.find_class
        persistent_load = torch_zip._RestrictedUnpickler.persistent_load

    def best(cls: type) -> float:
        times = []
        for _ in range(5):
            start = time.process_time()
            cls(io.BytesIO(data)).load()
            times.append(time.process_time() - start)
        return min(times)

    return best(Unbudgeted), best(torch_zip._RestrictedUnpickler), len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=HERE / "out" / "hostile")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    folder: Path = args.dir
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    home = folder / "home"
    cases = {name: build(folder) for name, build in hostile.CASES.items()}
    cases["dict-bomb-255"] = hostile.dict_bomb(folder, 255)

    print(f"{'case':20s} {'median s':>9s} {'peak RSS':>9s}  exit  line")
    for name, path in cases.items():
        runs, seconds = [], []
        for _ in range(args.runs):
            start = time.perf_counter()
            run = clirun.run_vaereg("hash", "--no-file-hashes", path, home=home)
            seconds.append(time.perf_counter() - start)
            runs.append(run)
        rss = max(r.peak_rss for r in runs) >> 20
        line = runs[-1].stderr.strip().replace(str(folder) + "/", "")
        print(f"{name:20s} {statistics.median(seconds):9.2f} {rss:7d} MB  {runs[-1].returncode:4d}  {line[:110]}")

    plain, budgeted, size = unpickle_overhead(folder)
    print(f"\nunpickling a {size / 1e6:.2f} MB data.pkl of 5,000 tensors: {plain:.3f} s without budgets, "
          f"{budgeted:.3f} s with them (+{(budgeted / plain - 1) * 100:.0f}%)")


if __name__ == "__main__":
    main()
