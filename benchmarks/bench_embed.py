"""``leader embed`` (``embed_dataset``) vs a bare ``model(x)`` loop; peak memory at 10K vs 100K images;
cost of one store append as the store grows.
Goals: >= 0.9x the bare loop's images/s; peak memory flat as the number of images grows;
append cost O(batch), independent of the rows already stored.

    .venv/bin/python benchmarks/bench_embed.py [--n 512] [--rounds 3] [--sizes 10000,100000]
    .venv/bin/python benchmarks/bench_embed.py --skip-throughput      # memory + append only (~2 min)

Throughput: the ``demo-quick`` student (smallest Swin, 224²) in eval mode with bf16 autocast,
batch 64, on the same images held in memory; ``embed_dataset`` adds the DataLoader, id
bookkeeping and the embedding-store writes (3 keys: ``e_da``, ``disease``, ``anatomy``).
Memory: a separate process per size embeds ``N`` synthetic 32² images generated on the fly
(so the dataset itself takes no memory) with a tiny network (64-d output), and reports its
peak RSS above the RSS before embedding, and the store's id lookup size.
Append cost: a separate process appends batches of ``--append-batch`` rows (64-d float32, ids
like ``nih/images/00012345_000.png``) to one store until it holds the largest size, timing
every append (wall and CPU seconds, bytes written); the table gives the median of the appends
just before each size is reached, and of ``contains`` + ``get`` on the new batch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _bench import header, interleave, med
from _bench import cpu_clock as clock


def _child(n: int, out: str) -> None:
    import torch
    from torch.utils.data import Dataset

    from leader.embed import embed_dataset

    class Synthetic(Dataset):
        def __len__(self):
            return n

        def item_id(self, i):
            return f"synthetic/{i:08d}"

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"image": torch.rand(1, 32, 32, generator=g), "id": self.item_id(i)}

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 4, 4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(32, 64)).eval()
    net(torch.rand(2, 1, 32, 32))
    base = _rss_mb()
    peak = [base]
    stop = threading.Event()

    def sample():  # the current RSS every 5 ms (ru_maxrss would report the import-time peak)
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t = clock()
    store = embed_dataset(lambda x, ids: {"e": net(x)}, Synthetic(), out, {"e": 64}, batch_size=256,
                          device="cpu", precision="fp32", flush_every=8192)
    dt = clock() - t
    stop.set()
    th.join()
    lookup = store._index().nbytes / 2**20 if hasattr(store, "_index") else float("nan")
    print(json.dumps({"n": len(store), "base_mb": base, "peak_mb": peak[0], "cpu_s": dt, "lookup_mb": lookup}))


def _append_child(sizes: list[int], batch: int, out: str) -> None:
    import numpy as np

    from leader.store import EmbeddingStore

    store = EmbeddingStore.create(out, {"e": 64})
    rng = np.random.default_rng(0)
    marks = sorted(sizes)
    rows: dict[int, list[dict]] = {m: [] for m in marks}
    window = 5  # appends measured before each mark
    n = 0
    while n < marks[-1]:
        ids = [f"nih/images/{i:08d}_000.png" for i in range(n, n + batch)]
        vec = rng.standard_normal((batch, 64), dtype=np.float32)
        files = {p: p.stat().st_size for p in Path(out).rglob("*") if p.is_file()}
        w, c = time.perf_counter(), time.process_time()
        store.append(ids, {"e": vec})
        w, c = time.perf_counter() - w, time.process_time() - c
        written = sum(p.stat().st_size for p in Path(out).rglob("*")
                      if p.is_file() and (p not in files or p.name == "index.parquet"))
        t = time.perf_counter()
        assert store.contains(ids).all()
        store.get(ids, "e")
        look = time.perf_counter() - t
        n += batch
        for m in marks:
            if m - window * batch < n <= m:
                rows[m].append({"wall": w, "cpu": c, "bytes": written, "lookup": look})
    out_rows = []
    for m in marks:
        r = rows[m]
        out_rows.append({"n": m, "wall_ms": 1e3 * med([x["wall"] for x in r]), "cpu_ms": 1e3 * med([x["cpu"] for x in r]),
                         "kb": med([x["bytes"] for x in r]) / 1024, "lookup_ms": 1e3 * med([x["lookup"] for x in r])})
    print(json.dumps(out_rows))


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512, help="images for the throughput comparison")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--append-batch", type=int, default=1024, help="rows per append in the append-cost test")
    ap.add_argument("--skip-throughput", action="store_true", help="only the memory and append-cost tables")
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--append-child", nargs=2, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        _child(int(a.child[0]), a.child[1])
        return
    if a.append_child:
        _append_child([int(s) for s in a.sizes.split(",")], int(a.append_child[0]), a.append_child[1])
        return
    header("leader embed vs bare model(x) loop (goal >= 0.9x; flat peak memory; O(batch) appends)",
           f"benchmarks/bench_embed.py --n {a.n} --rounds {a.rounds} --sizes {a.sizes}"
           + (" --skip-throughput" if a.skip_throughput else ""))
    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    if not a.skip_throughput:
        _throughput(a, work)
    print("\npeak memory of embed_dataset (separate process per size, tiny network, 32² synthetic images, "
          "flush_every 8192)")
    print("| images | peak RSS MB | RSS before embedding MB | growth MB | id lookup MB | CPU s |")
    print("|---|---|---|---|---|---|")
    for n in [int(s) for s in a.sizes.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--child", str(n), str(work / f"mem{n}")],
                             capture_output=True, text=True, env={**os.environ}, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"| {r['n']} | {r['peak_mb']:.0f} | {r['base_mb']:.0f} | {r['peak_mb'] - r['base_mb']:.0f} "
              f"| {r['lookup_mb']:.2f} | {r['cpu_s']:.1f} |")
    print(f"\ncost of one append of {a.append_batch} rows (64-d float32) to a store of N rows "
          "(median of the 5 appends before N; bytes = new files + the commit list)")
    print("| rows in store | wall ms | CPU ms | KB written | contains + get of the batch, ms |")
    print("|---|---|---|---|---|")
    out = subprocess.run([sys.executable, __file__, "--sizes", a.sizes, "--append-child", str(a.append_batch),
                          str(work / "append")], capture_output=True, text=True, env={**os.environ}, check=True).stdout
    for r in json.loads(out.strip().splitlines()[-1]):
        print(f"| {r['n']} | {r['wall_ms']:.1f} | {r['cpu_ms']:.1f} | {r['kb']:.0f} | {r['lookup_ms']:.1f} |")
    shutil.rmtree(work, ignore_errors=True)


def _throughput(a, work: Path) -> None:
    import torch
    from torch.utils.data import Dataset

    from leader.config import load_config
    from leader.embed import embed_dataset, student_embed_fn
    from leader.models.student import LeaderModel
    from leader.device import autocast_context

    sc = load_config("demo-quick")["student"]
    torch.manual_seed(0)
    model = LeaderModel(backbone=sc["backbone"], head_dims={"disease": 512, "anatomy": 320}, img_size=224,
                        backbone_kwargs=sc["backbone_kwargs"]).eval()
    x_all = torch.rand(a.n, 1, 224, 224, generator=torch.Generator().manual_seed(0))

    class Mem(Dataset):
        def __len__(self):
            return a.n

        def item_id(self, i):
            return f"img/{i:06d}"

        def __getitem__(self, i):
            return {"image": x_all[i], "id": self.item_id(i)}

    dims = {"e_da": model.e_da_dim, **model.head_dims}
    fn = student_embed_fn(model)

    def bare():
        t = clock()
        with torch.no_grad(), autocast_context(torch.device("cpu"), "bf16"):
            for s in range(0, a.n, 64):
                out = model(x_all[s:s + 64])
                {k: v.float() for k, v in out.items()}
        return a.n / (clock() - t)

    k = {"i": 0}

    def embed():
        k["i"] += 1
        t = clock()
        embed_dataset(fn, Mem(), work / f"store{k['i']}", dims, batch_size=64, device="cpu", precision="bf16",
                      flush_every=4096)
        return a.n / (clock() - t)

    bare()  # warm-up (oneDNN kernels)
    res = interleave({"bare": bare, "embed": embed}, a.rounds)
    b, e = med(res["bare"]), med(res["embed"])
    print(f"\nthroughput, {a.n} images 224², batch 64, bf16, {a.rounds} rounds")
    print("| variant | images/s (CPU time) |")
    print("|---|---|")
    print(f"| bare model(x) loop | {b:.1f} |\n| embed_dataset -> store | {e:.1f} |")
    print(f"ratio embed / bare: {e / b:.3f}")


if __name__ == "__main__":
    main()
