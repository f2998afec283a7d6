"""Shard loader vs raw PNG/JPEG/DICOM decoding, the same images at 224². Goal: >= 3x images/s.

    .venv/bin/python benchmarks/bench_shards.py [--rounds 3] [--phantoms 64]

Two image sets: the real-cxr pack (``../shared/data/real-cxr``: PNG, JPEG, DICOM, MHA of
1000-3000 px, as stored) and generated 1024² phantom PNGs. For each: raw files through
``ImageDataset`` (decode + antialiased resize to 224², in-memory cache off) vs the same images
written once by ``write_shards`` (8-bit PNG) and read through ``ShardImageDataset`` (random
access) and ``ShardStream`` (sequential tar streaming). One process, one thread, CPU seconds.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _bench import ROOT, header, interleave, med, phantom_pack
from _bench import cpu_clock as clock


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--phantoms", type=int, default=64)
    ap.add_argument("--real", default=str(ROOT.parent / "shared" / "data" / "real-cxr"))
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    header("shard loader vs raw decoding at 224² (goal >= 3x images/s)",
           f"benchmarks/bench_shards.py --rounds {a.rounds} --phantoms {a.phantoms}")
    from leader.patches import ImageDataset
    from leader.shards import ShardImageDataset, ShardStream, write_shards

    work = Path(a.work or tempfile.mkdtemp(prefix="bench-shards-"))
    sets = {}
    if Path(a.real).is_dir():
        from leader.datasets.pack import index_root

        sets["real-cxr pack"] = index_root(a.real)
    sets["phantoms 1024²"] = phantom_pack(work / "phantoms", a.phantoms, 1024)
    print("\n| image set | n | formats | raw img/s | shards (random access) img/s | ratio | shards (stream) img/s | ratio | shard once (s) | shard MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, m in sets.items():
        out = work / ("shards-" + name.split()[0])
        t0 = clock()
        idx = write_shards(m, out, image_size=224, bit_depth=8, shard_size=64, progress=False)
        once = clock() - t0
        mb = sum(s["bytes"] for s in idx["shards"]) / 1e6
        raw = ImageDataset(m, 224, cache=False)
        sh = ShardImageDataset(out)
        st = ShardStream(out, "image", shuffle_buffer=256)
        n = len(raw)

        def run_raw():
            t = clock()
            for i in range(n):
                raw[i]
            return n / (clock() - t)

        def run_sh():
            t = clock()
            for i in range(n):
                sh[i]
            return n / (clock() - t)

        def run_st():
            t = clock()
            k = sum(len(b["id"]) for b in st.rank_stream(stage=1, epoch=0, seed=0, rank=0, world_size=1, micro_batch=32))
            return k / (clock() - t)

        res = interleave({"raw": run_raw, "sh": run_sh, "st": run_st}, a.rounds)
        fmts = ",".join(sorted(set(str(f) for f in _formats(m))))
        r, s_, t_ = med(res["raw"]), med(res["sh"]), med(res["st"])
        print(f"| {name} | {n} | {fmts} | {r:.0f} | {s_:.0f} | {s_ / r:.1f}x | {t_:.0f} | {t_ / r:.1f}x | {once:.1f} | {mb:.1f} |")
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)


def _formats(m):
    from leader.io import sniff_format

    return [sniff_format(p) for p in m.df["path"]]


if __name__ == "__main__":
    main()
