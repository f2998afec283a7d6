"""Teacher cache vs online teachers: the same stage, batch and data, full ``Trainer`` steps.
Goal: a speed-up close to (student + teachers) / student.

    .venv/bin/python benchmarks/bench_teacher_cache.py [--steps 10] [--batch 4] [--rounds 2]

Stage 2 (pairs, both teachers), ``demo-quick`` student, demo teachers, bf16, random-access shards.
The cached run reads both teachers from stores built by ``cache_teacher`` (the same code as
``leader teachers cache``; ``--views`` fixed augmented views per sample). The ideal ratio is
measured in the same run: bare student forward+backward+AdamW vs the same plus the teachers'
forward, on batches in memory. Times are CPU seconds of this process (see ``_bench.py``).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _bench import cpu_clock as clock
from _bench import demo_setup, header, interleave, med


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    header("teacher cache vs online teachers (goal: ~ (student + teachers) / student)",
           f"benchmarks/bench_teacher_cache.py --steps {a.steps} --batch {a.batch} --rounds {a.rounds} --views {a.views}")
    import torch

    from leader.shards import ShardImageDataset, ShardPairDataset, ShardPatchDataset
    from leader.teachers.cache import apply_teacher_cache, cache_teacher
    from leader.train import loop
    from leader.device import autocast_context
    from leader.train.loop import Trainer
    from leader.transforms import PairedAugment

    work = Path(a.work or tempfile.mkdtemp(prefix="bench-cache-"))
    S, warm = 224, 2
    n_pairs = (a.steps + warm + 1) * a.batch
    m, pairs, teachers, cfg, student = demo_setup(work, n_pairs, a.batch, S)
    params = dict(degrees=10.0, translate=0.06, scale=[0.9, 1.1])
    aug = PairedAugment(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
    t0 = clock()
    imgs, pats = ShardImageDataset(work / "shards"), ShardPatchDataset(work / "shards", kinds=("disease", "healthy"))
    for name, t in teachers.items():
        cache_teacher(t, [imgs, pats], work / "cache" / name, views=a.views, augment=aug, augment_params=params,
                      view_seed=0, image_size=S, batch_size=16, device="cpu", precision="bf16")
    cache_s = clock() - t0
    cached = apply_teacher_cache(teachers, {n: work / "cache" / n for n in teachers})
    data = ShardPairDataset(work / "shards", transform=aug)

    stamps: list[float] = []
    orig_write = loop.LossLog.write

    def write(self, row):
        orig_write(self, row)
        stamps.append(clock())

    loop.LossLog.write = write

    def full(ts, tag):
        def run():
            out = work / f"run-{tag}"
            shutil.rmtree(out, ignore_errors=True)
            stamps.clear()
            Trainer(student(ts), ts, cfg, out, device=torch.device("cpu")).fit(None, data)
            t = list(stamps)
            return [b - a_ for a_, b in zip(t[warm:], t[warm + 1:])]
        return run

    batches = []
    for k in range(a.steps + warm):
        items = [data[(k * a.batch + j) % len(data)] for j in range(a.batch)]
        batches.append(torch.cat([torch.stack([it["image"] for it in items]), torch.stack([it["patch"] for it in items])]))

    def bare(with_teachers):
        def run():
            model = student().train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            times = []
            for k, x in enumerate(batches):
                t0 = clock()
                with autocast_context(torch.device("cpu"), "bf16"):
                    if with_teachers:
                        tg = {n: t.embed(x) for n, t in teachers.items()}
                    else:
                        tg = {n: torch.zeros(len(x), t.dim) for n, t in teachers.items()}
                    out = model(x)
                loss = sum(torch.nn.functional.mse_loss(out[n].float(), tg[n]) for n in teachers)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if k >= warm:
                    times.append(clock() - t0)
            return times
        return run

    res = interleave({"online": full(teachers, "online"), "cached": full(cached, "cached"),
                      "bare student": bare(False), "bare student+teachers": bare(True)}, a.rounds)
    on, ca = med(res["online"]), med(res["cached"])
    ideal = med(res["bare student+teachers"]) / med(res["bare student"])
    print(f"\nbatch {a.batch} pairs, {a.steps} timed steps x {a.rounds} rounds; cache built once in {cache_s:.1f} CPU s "
          f"({len(imgs) + len(pats)} items x {1 + a.views} views x 2 teachers)")
    print("| variant | median CPU s/step |")
    print("|---|---|")
    for k, v in res.items():
        print(f"| {k} | {med(v):.3f} |")
    print(f"speed-up cached vs online: {on / ca:.2f}x; ideal (student + teachers) / student: {ideal:.2f}x "
          f"({on / ca / ideal:.0%} of ideal)")
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
