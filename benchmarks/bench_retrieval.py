"""Approximate vs exact retrieval over N x 1024 embeddings. Goal (N = 1M): recall@100 >= 0.95 at
>= 10x the exact speed.

    .venv/bin/python benchmarks/bench_retrieval.py [--n 1000000] [--dim 1024] [--queries 500]
        [--kind ivf|ivf-sq8|hnsw] [--nlist 1024] [--nprobe 8,16,32]

Vectors: synthetic, with the structure of learned embeddings - a 48-d latent mixture of 500
Gaussian clusters projected to 1024-d plus 15 % isotropic noise, unit-normalised (uniform
random vectors have no neighbourhood structure and defeat every ANN index; real embedding
sets differ, so tune ``nprobe`` on your own vectors). Exact: brute-force inner product (FAISS, the kernels of
``IndexFlatIP``, i.e. ``EmbeddingIndex(kind="exact")``) over the array in memory. Approximate:
:class:`leader.embed.EmbeddingIndex`. Recall@100 = |approx top-100 ∩ exact top-100| / 100,
averaged over the queries. One thread by default (``BENCH_THREADS``); times are wall seconds of
the searches themselves (FAISS threads are not counted by ``process_time`` reliably).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from _bench import header


def _gen(rng, n, dim, latent, A, centres, sigma=0.7, noise=0.15):
    lab = rng.integers(0, len(centres), n)
    z = centres[lab] + sigma * rng.standard_normal((n, latent), dtype=np.float32)
    x = z @ A
    x += noise * np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(dim) * rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _data(n, queries, dim, seed=0, latent=48, clusters=500):
    """``n`` vectors and ``queries`` fresh queries from the same distribution."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((latent, dim), dtype=np.float32) / np.sqrt(latent)
    centres = rng.standard_normal((clusters, latent), dtype=np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        x[s:e] = _gen(rng, e - s, dim, latent, A, centres)
    return x, _gen(rng, queries, dim, latent, A, centres)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--kind", default="ivf")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", default="8,16,32")
    ap.add_argument("--train", type=int, default=65536)
    a = ap.parse_args()
    header("approximate vs exact retrieval (goal: recall@100 >= 0.95 at >= 10x the speed)",
           f"benchmarks/bench_retrieval.py --n {a.n} --dim {a.dim} --queries {a.queries} --kind {a.kind} "
           f"--nlist {a.nlist} --nprobe {a.nprobe}")
    import faiss

    from leader.embed import EmbeddingIndex

    faiss.omp_set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t = time.perf_counter()
    x, q = _data(a.n, a.queries, a.dim)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    idx = EmbeddingIndex(a.dim, kind=a.kind, nlist=a.nlist, normalise=False, train_size=a.train)
    idx.add(x)
    build_s = time.perf_counter() - t
    rounds = []
    for r in range(2):  # exact and approximate interleaved, twice
        t = time.perf_counter()
        _, gt = faiss.knn(q, x, a.k, metric=faiss.METRIC_INNER_PRODUCT)
        exact_s = time.perf_counter() - t
        row = {"exact": exact_s}
        for npb in [int(v) for v in a.nprobe.split(",")]:
            idx.nprobe = npb
            idx.ef_search = npb
            t = time.perf_counter()
            _, got = idx.search(q, a.k)
            dt = time.perf_counter() - t
            rec = np.mean([len(set(g[g >= 0]) & set(e)) / a.k for g, e in zip(got, gt)])
            row[npb] = (dt, rec)
        rounds.append(row)
    print(f"\n{a.n} x {a.dim} vectors ({x.nbytes / 2**30:.1f} GiB), {a.queries} queries, k={a.k}; "
          f"data {gen_s:.0f} s, index build ({a.kind}, nlist {a.nlist}, train {a.train}) {build_s:.0f} s")
    ex = min(r["exact"] for r in rounds)
    print(f"exact: {ex:.2f} s ({a.queries / ex:.0f} queries/s)")
    print(f"| {a.kind} nprobe | s | queries/s | speed-up vs exact | recall@{a.k} |")
    print("|---|---|---|---|---|")
    for npb in [int(v) for v in a.nprobe.split(",")]:
        dt = min(r[npb][0] for r in rounds)
        rec = rounds[0][npb][1]
        print(f"| {npb} | {dt:.3f} | {a.queries / dt:.0f} | {ex / dt:.1f}x | {rec:.3f} |")


if __name__ == "__main__":
    main()
