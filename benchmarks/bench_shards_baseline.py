"""Shard writing and reading: this checkout's ``leader.shards`` vs another version of the module.

    git show REV:src/leader/shards.py > /tmp/shards_baseline.py
    .venv/bin/python benchmarks/bench_shards_baseline.py --baseline /tmp/shards_baseline.py [--rounds 8] [--phantoms 48]

Both modules run in one process on the same phantom pack (1024² PNGs, disease + healthy
patches, 224², 8-bit PNG members, 16 images per shard): each round writes the shards with each
module, then reads the baseline's shards with each (streamed images, streamed pairs, random
access) and decodes the raw files once; the two modules alternate which goes first from round to
round. CPU seconds of this process, one thread. Prints min / median per module, the median
ratio (this / baseline) and whether the two modules wrote identical files.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import tempfile
from pathlib import Path

from _bench import cpu_clock as clock
from _bench import header, phantom_pack


def _load_baseline(path: str):
    """The baseline file as ``leader._shards_baseline`` (so that its relative imports resolve)."""
    spec = importlib.util.spec_from_file_location("leader._shards_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", required=True, help="another version of src/leader/shards.py")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--phantoms", type=int, default=48)
    a = ap.parse_args()
    header("shards: this checkout vs a baseline module (writing, streaming, random access)",
           f"benchmarks/bench_shards_baseline.py --baseline {a.baseline} --rounds {a.rounds} --phantoms {a.phantoms}")
    import pandas as pd

    from leader import shards as this
    from leader.patches import ImageDataset, disease_patches, healthy_patches

    base = _load_baseline(a.baseline)
    work = Path(tempfile.mkdtemp(prefix="bench-shards-baseline-"))
    m = phantom_pack(work / "pack", a.phantoms, 1024)
    pairs = pd.concat([disease_patches(m, on_bad_box="skip")[0], healthy_patches(m, n_per_image=2, seed=0)],
                      ignore_index=True)
    raw = ImageDataset(m, 224, cache=False)
    mods = {"baseline": base, "this": this}
    what = ("write", "stream images", "stream pairs", "random access")
    res: dict[str, list[float]] = {f"{w} {k}": [] for w in what for k in mods}
    res["raw"] = []

    def stream(mod, root, kind):
        st = mod.ShardStream(root, kind, shuffle_buffer=256)
        t = clock()
        n = sum(len(b["image"]) for b in st.rank_stream(stage=1, epoch=0, seed=0, rank=0, world_size=1,
                                                        micro_batch=32))
        return n / (clock() - t)

    def random_access(mod, root):
        ds = mod.ShardImageDataset(root)
        t = clock()
        for i in range(len(ds)):
            ds[i]
        return len(ds) / (clock() - t)

    identical = True
    for r in range(a.rounds):
        order = list(mods) if r % 2 == 0 else list(reversed(mods))
        for k in order:
            t = clock()
            mods[k].write_shards(m, work / f"{k}-{r}", image_size=224, patches=pairs, shard_size=16, progress=False)
            res[f"write {k}"].append(clock() - t)
        identical &= all((work / f"baseline-{r}" / f.name).read_bytes() == f.read_bytes()
                         for f in (work / f"this-{r}").iterdir())
        t = clock()
        for i in range(len(raw)):
            raw[i]
        res["raw"].append(len(raw) / (clock() - t))
        root = work / f"baseline-{r}"
        for k in order:
            res[f"stream images {k}"].append(stream(mods[k], root, "image"))
            res[f"stream pairs {k}"].append(stream(mods[k], root, "pair"))
            res[f"random access {k}"].append(random_access(mods[k], root))
    print(f"\n{len(m)} images, {len(pairs)} patches, {a.rounds} rounds; files identical: {identical}\n")
    print("| measure | baseline min | baseline median | this min | this median | this / baseline (median) |")
    print("|---|---|---|---|---|---|")
    units = {"write": "CPU s", "stream images": "img/s", "stream pairs": "pairs/s", "random access": "img/s"}
    for w in what:
        b, t = res[f"{w} baseline"], res[f"{w} this"]
        print(f"| {w} ({units[w]}) | {min(b):.3g} | {statistics.median(b):.3g} | {min(t):.3g} | "
              f"{statistics.median(t):.3g} | {statistics.median(t) / statistics.median(b):.3f} |")
    rm = statistics.median(res["raw"])
    print(f"| raw decoding (img/s) | {min(res['raw']):.3g} | {rm:.3g} | | | |")
    for w in ("stream images", "random access"):
        print(f"loader ratio {w} / raw decoding: baseline {statistics.median(res[w + ' baseline']) / rm:.1f}x, "
              f"this {statistics.median(res[w + ' this']) / rm:.1f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
