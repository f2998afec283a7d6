"""Benchmark: metadata-only indexing time of the dataset readers (not part of the test run).

Indexes the real NIH ChestX-ray14 metadata shipped in the torchxrayvision wheel
(``Data_Entry_2017_v2020.csv.gz``, 112,120 rows, + ``BBox_List_2017.csv.gz``) with
``read_nih(check_files=False)`` at several sizes — 1/16x, 1/4x, 1x and 4x the rows (the
4x file repeats the rows with new image names and patient ids) — and reports wall and CPU
seconds, rows per second and the time ratio to 1x: linear growth shows as ratio ~= size
factor. It then times the other big real files once (CheXpert, PadChest, VinDr, RSNA, SIIM).

    .venv/bin/python benchmarks/bench_index.py [--factors 0.0625,0.25,1,4] [--repeat 3] [--json out.json]

Scaled CSVs are written to a temporary folder and deleted afterwards; nothing is written to
the repository. Figures depend on the machine and on its load (the CPU column is less
sensitive to other processes than the wall column).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path


def _txv_data() -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("torchxrayvision is not installed (pip install torchxrayvision) - it ships the metadata")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _scaled_nih(src: Path, factor: float, out: Path) -> int:
    """Write Data_Entry / BBox_List with ``factor`` x the rows into ``out``; returns rows."""
    with gzip.open(src / "Data_Entry_2017_v2020.csv.gz", "rt", newline="") as fh:
        header, *rows = fh.read().splitlines()
    with gzip.open(src / "BBox_List_2017.csv.gz", "rt", newline="") as fh:
        bheader, *brows = fh.read().splitlines()
    out.mkdir(parents=True, exist_ok=True)
    if factor <= 1:
        keep = rows[: max(1, int(round(len(rows) * factor)))]
        names = {r.split(",", 1)[0] for r in keep}
        bkeep = [r for r in brows if r.split(",", 1)[0] in names]
    else:
        reps = int(round(factor))
        keep, bkeep = [], []
        for r in range(reps):
            pre = "" if r == 0 else f"r{r:02d}_"
            for line in rows:
                f = line.split(",")
                f[0] = pre + f[0]
                f[3] = str(int(f[3]) + r * 100_000)  # Patient ID
                keep.append(",".join(f))
            for line in brows:
                bkeep.append(pre + line)
    (out / "Data_Entry_2017_v2020.csv").write_text("\n".join([header, *keep]) + "\n")
    (out / "BBox_List_2017.csv").write_text("\n".join([bheader, *bkeep]) + "\n")
    return len(keep)


def _time(fn, repeat: int) -> tuple[float, float, object]:
    walls, cpus, res = [], [], None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        res = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--factors", default="0.0625,0.25,1,4")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    ap.add_argument("--skip-others", action="store_true", help="only the NIH scaling series")
    a = ap.parse_args(argv)

    from leader.datasets import (read_chexpert, read_nih, read_padchest, read_rsna, read_siim,  # noqa: PLC0415
                                 read_vindr)

    src = _txv_data()
    factors = [float(x) for x in a.factors.split(",") if x.strip()]
    results: dict = {"nih_scaling": [], "others": []}
    print(f"NIH ChestX-ray14 metadata, read_nih(check_files=False), median of {a.repeat}")
    print(f"{'factor':>8} {'rows':>9} {'wall s':>8} {'cpu s':>8} {'rows/s':>10} {'ratio':>7}")
    base = None
    with tempfile.TemporaryDirectory(prefix="leader-bench-") as tmp:
        for f in factors:
            d = Path(tmp) / f"x{f:g}"
            n = _scaled_nih(src, f, d)
            wall, cpu, m = _time(lambda: read_nih(d, check_files=False), a.repeat if n <= 200_000 else 1)
            assert len(m) == n, (len(m), n)
            if f == 1:
                base = wall
            results["nih_scaling"].append({"factor": f, "rows": n, "wall_s": wall, "cpu_s": cpu})
        base = base or results["nih_scaling"][0]["wall_s"] / factors[0]
        for r in results["nih_scaling"]:
            r["ratio_to_1x"] = r["wall_s"] / base
            print(f"{r['factor']:>8g} {r['rows']:>9,} {r['wall_s']:>8.2f} {r['cpu_s']:>8.2f} "
                  f"{r['rows'] / r['wall_s']:>10,.0f} {r['ratio_to_1x']:>7.2f}")

    if not a.skip_others:
        others = [
            ("chexpert train.csv", lambda: read_chexpert(src, metadata=src / "chexpert_train.csv.gz", check_files=False)),
            ("padchest 160K csv", lambda: read_padchest(src, check_files=False)),
            ("vindr train.csv (all)", lambda: read_vindr(src, metadata=src / "vinbigdata-train.csv.gz",
                                                         check_files=False)),
            ("vindr train.csv (consensus)", lambda: read_vindr(src, metadata=src / "vinbigdata-train.csv.gz",
                                                               radiologists="consensus", check_files=False)),
            ("rsna stage_2_train_labels", lambda: read_rsna(src, labels_csv=src / "kaggle_stage_2_train_labels.csv.zip",
                                                            check_files=False)),
            ("siim train-rle", lambda: read_siim(src, rle_csv=src / "siim-pneumothorax-train-rle.csv.gz",
                                                 check_files=False)),
        ]
        print(f"\nother real metadata files, median of {a.repeat}")
        print(f"{'reader':<28} {'images':>9} {'wall s':>8} {'cpu s':>8}")
        for name, fn in others:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wall, cpu, m = _time(fn, a.repeat)
            results["others"].append({"reader": name, "images": len(m), "wall_s": wall, "cpu_s": cpu})
            print(f"{name:<28} {len(m):>9,} {wall:>8.2f} {cpu:>8.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
