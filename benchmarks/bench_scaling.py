"""How cost grows with work: sharding and embedding time for 1x, 4x, 16x the data (goal: linear).

    .venv/bin/python benchmarks/bench_scaling.py [--base 32] [--factors 1,4,16]

Data: ``--base`` generated 512² phantom PNGs; ``k x`` the data is a manifest of ``k * base``
rows (each file listed ``k`` times under distinct ids, so decoding work scales while the files
stay in the page cache). Sharding: ``write_shards`` (224², 8-bit PNG, with disease/healthy
patches, one process). Embedding: ``embed_dataset`` of the ``demo-quick`` student (bf16) over
``ShardImageDataset``. Manifest indexing is measured by ``benchmarks/bench_index.py``. CPU
seconds of this process, one thread.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _bench import cpu_clock as clock
from _bench import header, phantom_pack


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=int, default=32)
    ap.add_argument("--factors", default="1,4,16")
    a = ap.parse_args()
    header("cost vs amount of data (goal: linear)", f"benchmarks/bench_scaling.py --base {a.base} --factors {a.factors}")
    import pandas as pd
    import torch

    from leader.config import load_config
    from leader.embed import embed_dataset, student_embed_fn
    from leader.manifest import Manifest
    from leader.models.student import LeaderModel
    from leader.patches import disease_patches, healthy_patches
    from leader.shards import ShardImageDataset, write_shards

    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    m = phantom_pack(work / "pack", a.base, 512)
    sc = load_config("demo-quick")["student"]
    torch.manual_seed(0)
    model = LeaderModel(backbone=sc["backbone"], head_dims={"disease": 512, "anatomy": 320}, img_size=224,
                        backbone_kwargs=sc["backbone_kwargs"]).eval()
    fn = student_embed_fn(model)
    dims = {"e_da": model.e_da_dim, **model.head_dims}
    with torch.no_grad():  # warm-up
        model(torch.rand(8, 1, 224, 224))
    rows = []
    for k in [int(v) for v in a.factors.split(",")]:
        df = pd.concat([m.df.assign(id=m.df["id"] + f"#{r}") for r in range(k)], ignore_index=True)
        mk = Manifest(df)
        pt = pd.concat([disease_patches(mk, on_bad_box="skip")[0], healthy_patches(mk, n_per_image=2, seed=0)],
                       ignore_index=True)
        t = clock()
        write_shards(mk, work / f"sh{k}", image_size=224, patches=pt, shard_size=64, progress=False)
        shard_s = clock() - t
        t = clock()
        embed_dataset(fn, ShardImageDataset(work / f"sh{k}"), work / f"emb{k}", dims, batch_size=64, device="cpu",
                      precision="bf16", flush_every=4096)
        emb_s = clock() - t
        rows.append((k, len(mk), len(pt), shard_s, emb_s))
    b = rows[0]
    print("\n| data | images | patches | shard s | per image ms | vs linear | embed s | per image ms | vs linear |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, n, p, s, e in rows:
        print(f"| {k}x | {n} | {p} | {s:.1f} | {1000 * s / n:.1f} | {s / (b[3] * k / b[0]):.2f} | {e:.1f} | "
              f"{1000 * e / n:.1f} | {e / (b[4] * k / b[0]):.2f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
