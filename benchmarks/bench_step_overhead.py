"""Training-step overhead: a full ``Trainer`` step (data loading, views, logging, LR schedule,
position bookkeeping) vs the bare student forward+backward + teacher forward + AdamW step on
batches already in memory. Goal: <= 1.15x.

    .venv/bin/python benchmarks/bench_step_overhead.py [--steps 8] [--batch 4] [--rounds 2]

Stage 2 of Algorithm 1 (image/patch pairs, both teachers), the ``demo-quick`` student (smallest
Swin at 224²) and the demo teachers (resnet18, convnext_atto at 128²), bf16 autocast. The full
step is timed between consecutive loss-log writes (so the loading of the next batch is
included); the first steps of each run are dropped. Times are **CPU seconds of this process**
(``time.process_time``, all threads): on a shared machine wall time mostly measures the other
tenants. With ``--workers 0`` all loading runs in this process and is counted. On an idle
machine, ``--clock wall --workers 1`` measures what a training job sees: the loading of the
next batches overlaps the step in a DataLoader worker.
Data: raw PNG files (``PairDataset``, in-memory cache off) and random-access shards.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import _bench
from _bench import demo_setup, header, interleave, med

clock = _bench.cpu_clock


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8, help="timed steps per run")
    ap.add_argument("--batch", type=int, default=4, help="pairs per step")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: CPU seconds of this process (robust on a shared box; loading in DataLoader "
                         "workers is not counted, so use with --workers 0); wall: elapsed seconds (idle "
                         "machine; with --workers N the loading overlaps the step as in real training)")
    a = ap.parse_args()
    global clock
    clock = _bench.cpu_clock if a.clock == "cpu" else _bench.clock
    header("training-step overhead (goal <= 1.15x)",
           f"benchmarks/bench_step_overhead.py --steps {a.steps} --batch {a.batch} --rounds {a.rounds} --workers {a.workers} "
           f"--clock {a.clock}")
    import torch

    from leader.patches import PairDataset
    from leader.shards import ShardPairDataset
    from leader.train import loop
    from leader.device import autocast_context
    from leader.train.loop import Trainer
    from leader.transforms import PairedAugment

    work = Path(a.work or tempfile.mkdtemp(prefix="bench-step-"))
    S, warm = 224, 2
    n_pairs = (a.steps + warm + 1) * a.batch
    m, pairs, teachers, cfg, student = demo_setup(work, n_pairs, a.batch, S, a.workers)
    aug = PairedAugment()
    raw = PairDataset(m, pairs, S, transform=aug, cache=False)
    shards = ShardPairDataset(work / "shards", transform=aug)

    stamps: list[float] = []
    orig_write = loop.LossLog.write

    def write(self, row):  # CPU-time stamp of every logged step (wall time is useless on a loaded box)
        orig_write(self, row)
        stamps.append(clock())

    loop.LossLog.write = write

    def full(ds, tag):
        def run():
            out = work / f"run-{tag}"
            shutil.rmtree(out, ignore_errors=True)
            stamps.clear()
            Trainer(student(), teachers, cfg, out, device=torch.device("cpu")).fit(None, ds)
            t = list(stamps)
            return [b - a_ for a_, b in zip(t[warm:], t[warm + 1:])]
        return run

    # bare: the same networks and optimizer on batches already in memory
    batches = []
    for k in range(a.steps + warm):
        items = [shards[(k * a.batch + j) % len(shards)] for j in range(a.batch)]
        batches.append((torch.stack([it["image"] for it in items]), torch.stack([it["patch"] for it in items])))
    loss_fn = torch.nn.functional.mse_loss

    def bare():
        model = student().train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
        times = []
        for k, (xi, xp) in enumerate(batches):
            t0 = clock()
            x = torch.cat([xi, xp])
            with autocast_context(torch.device("cpu"), "bf16"):
                tg = {n: t.embed(x) for n, t in teachers.items()}
                out = model(x)
            loss = sum(loss_fn(out[n].float()[:len(xi)], tg[n][:len(xi)]) + loss_fn(out[n].float()[len(xi):], tg[n][len(xi):])
                       for n in teachers)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if k >= warm:
                times.append(clock() - t0)
        return times

    res = interleave({"bare": bare, "full-shards": full(shards, "shards"), "full-raw": full(raw, "raw")}, a.rounds)
    b = med(res["bare"])
    print(f"\nbatch {a.batch} pairs ({2 * a.batch} images / step), {a.steps} timed steps x {a.rounds} rounds")
    print("| variant | median s/step | ratio to bare |")
    print("|---|---|---|")
    for k, v in res.items():
        print(f"| {k} | {med(v):.3f} | {med(v) / b:.3f} |")
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
