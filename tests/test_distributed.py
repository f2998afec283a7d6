"""DDP on CPU (gloo, 2 processes launched by torchrun) computes the same training as 1 process.

One torchrun launch (this file run as a script) checks, with a global batch of 8 split as
2 ranks x 2 accumulation micro-steps x 2 samples:

* resume at another world size: a 1-process run stopped after 4 steps (``max_steps``) is
  finished by 2 processes; its loss curve equals an uninterrupted 1-process run with batch 8
  within rtol 1e-4 (fp32; the only differences are float summation order: measured 1.7e-7);
* the last global batch of each epoch (18 samples = 8 + 8 + 2) leaves rank 1 without real
  samples: padding with weight 0 keeps the ranks in step (no hang);
* field report BR-26: stage 1 trains only the disease head and neither errors nor hangs; the
  anatomy head is unchanged by stage 1 and identical on both ranks after stage 2;
* a trainable parameter that never gets a gradient is an error naming it, on every rank,
  without a hang.

A second launch embeds across 2 ranks into one store, after merging what an interrupted run
at another world size left behind.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import Dataset

S = 32
N = 18
HERE = Path(__file__).resolve()


class _Images(Dataset):
    """Random images, un-augmented (``transform`` None): the trainer applies the seeded views."""

    def __init__(self, n=N, seed=0, transform=None):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 1, S, S, generator=g)
        self.transform = transform

    def __len__(self):
        return len(self.x)

    def _t(self, x):
        return x if self.transform is None else self.transform(x)

    def __getitem__(self, i):
        return {"image": self._t(self.x[i]), "id": f"img{i}", "index": i}


class _Pairs(_Images):
    def __getitem__(self, i):
        return {"image": self._t(self.x[i]), "patch": self._t(self.x[i].flip(-1)), "image_id": f"img{i}",
                "patch_id": f"img{i}::p", "index": i}


def _teacher(name, dim, seed):
    from leader.teachers.base import InputSpec
    from leader.teachers.module import ModuleTeacher

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, dim))
    return ModuleTeacher(name, net, InputSpec(size=32, channels=3))


def _setup(extra=()):
    from leader.config import load_config
    from leader.models.student import LeaderModel

    cfg = load_config("demo-quick", ["stage1.epochs=2", "stage2.epochs=2", "stage1.batch_size=8",
                                     "stage2.batch_size=8", "optim.warmup_steps=2", "precision=fp32",
                                     "checkpoint_every=0", "device=cpu", "num_workers=0", "augment.degrees=5",
                                     "augment.translate=0.05", "augment.scale=[0.95,1.05]", *extra])
    teachers = {"disease": _teacher("disease", 12, 1), "anatomy": _teacher("anatomy", 20, 2)}
    torch.manual_seed(0)
    model = LeaderModel.for_teachers(teachers, backbone="test_vit", img_size=S)
    # the trainer applies cfg.augment (here degrees 5, translate 0.05, scale 0.95-1.05) to un-augmented items
    return cfg, teachers, model, _Images(), _Pairs()


def _anatomy(model) -> dict:
    return {k: v.detach().clone() for k, v in model.heads["anatomy"].state_dict().items()}


# ------------------------------------------------------------------------------------ worker
def _worker(out: Path) -> None:
    """Runs under torchrun (2 processes)."""
    from safetensors.torch import load_file

    from leader.train import distributed as D
    from leader.train.loop import Trainer

    torch.set_num_threads(1)
    cfg, teachers, model, s1, s2 = _setup(["stage2.grad_accum=2", "stage1.micro_batch_size=2"])
    init = _anatomy(model)
    trainer = Trainer(model, teachers, cfg, out / "cut", device=torch.device("cpu"))
    r = trainer.dist.rank
    assert trainer.dist.world_size == 2
    t0 = time.time()
    trainer.fit(s1, s2, resume=True)  # continues the 1-process run stopped after 4 steps
    stage1 = load_file(str(out / "cut" / "stage1" / "model.safetensors"))
    res = {
        "rank": r,
        "seconds": time.time() - t0,
        "anatomy_unchanged_in_stage1": all(torch.equal(stage1[f"heads.anatomy.{k}"], v) for k, v in init.items()),
    }
    torch.save(_anatomy(model), out / f"anatomy_rank{r}.pt")
    # an unexpectedly unused trainable parameter: an error naming it on every rank, no hang
    cfg, teachers, bad, s1, _ = _setup()
    bad.extra = nn.Linear(3, 3)
    try:
        Trainer(bad, teachers, cfg, out / "bad", device=torch.device("cpu")).fit(s1, None)
        res["unused_error"] = None
    except RuntimeError as e:
        res["unused_error"] = str(e)
    (out / f"result_rank{r}.json").write_text(json.dumps(res))
    D.barrier()
    D.cleanup()


def _fsdp_worker(out: Path) -> None:
    """Runs under torchrun (2 processes): FSDP continues a 1-process run and stops at step 9."""
    from safetensors.torch import load_file

    from leader.train import distributed as D
    from leader.train.loop import Trainer

    torch.set_num_threads(1)
    cfg, teachers, model, s1, s2 = _setup(["distributed.strategy=fsdp", "max_steps=9", "stage2.grad_accum=2",
                                           "stage1.micro_batch_size=2", "optim.grad_clip=1.0"])
    init = _anatomy(model)
    trainer = Trainer(model, teachers, cfg, out / "fsdp", device=torch.device("cpu"))
    assert trainer.fsdp and type(trainer.model.backbone.blocks[0].attn.qkv.weight).__name__ == "DTensor"
    trainer.fit(s1, s2, resume=True)
    stage1 = load_file(str(out / "fsdp" / "stage1" / "model.safetensors"))
    res = {"anatomy_unchanged_in_stage1": all(torch.equal(stage1[f"heads.anatomy.{k}"], v) for k, v in init.items()),
           "position": trainer.position}
    (out / f"fsdp_rank{trainer.dist.rank}.json").write_text(json.dumps(res))
    D.barrier()
    D.cleanup()


class _Vecs(Dataset):
    """30 ids; the embedding of item i is computable from i (to check what each rank wrote)."""

    def __len__(self):
        return 30

    def item_id(self, i):
        return f"v{i:03d}"

    def __getitem__(self, i):
        return {"image": torch.full((1, 4, 4), float(i)), "id": self.item_id(i)}


def _embed_worker(out: Path) -> None:
    from leader.embed import embed_dataset
    from leader.train import distributed as D

    D.setup("cpu")
    seen = []

    def fn(x, ids):
        seen.extend(ids)
        return {"a": x.flatten(1)[:, :3] * 2}

    embed_dataset(fn, _Vecs(), out / "emb", {"a": 3}, batch_size=4, flush_every=4, device="cpu", precision="fp32")
    (out / f"embedded_rank{D.info().rank}.json").write_text(json.dumps(seen))
    D.cleanup()


# ------------------------------------------------------------------------------------ test
def _torchrun(*args, timeout=150):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(HERE), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def _fit_one(out: Path, extra=()) -> list[dict]:
    from leader.train.loop import Trainer, read_losses

    cfg, teachers, model, s1, s2 = _setup(extra)
    Trainer(model, teachers, cfg, out, device=torch.device("cpu")).fit(s1, s2, resume=True)
    return read_losses(out / "losses.csv")


def test_two_processes_match_one_process(tmp_path):
    from leader.train.loop import read_losses

    ref = _fit_one(tmp_path / "ref")
    assert len(ref) == 12  # 2 stages x 2 epochs x ceil(18 / 8) steps
    # a 1-process run stopped after 4 steps (stage 1, epoch 1) ...
    stopped = _fit_one(tmp_path / "cut", ["max_steps=4"])
    assert len(stopped) == 4
    # ... finished by 2 gloo processes (torchrun), with gradient accumulation in stage 2
    _torchrun("worker", str(tmp_path))
    rows = read_losses(tmp_path / "cut" / "losses.csv")
    assert [int(r["step"]) for r in rows] == [int(r["step"]) for r in ref]
    a = [r["loss"] for r in rows]
    b = [r["loss"] for r in ref]
    worst = max(abs(x - y) / abs(y) for x, y in zip(a, b))
    print(f"max relative loss difference 2 vs 1 process: {worst:.2e}")
    assert worst < 1e-4, f"2-process loss curve differs from 1 process: rel {worst:.2e}\n{a}\n{b}"
    for key in ("loss_disease_image", "loss_anatomy_patch"):
        got = [r[key] for r in rows if not math.isnan(r[key])]
        want = [r[key] for r in ref if not math.isnan(r[key])]
        assert len(got) == len(want)
        assert max(abs(x - y) / abs(y) for x, y in zip(got, want)) < 1e-3
    res = [json.loads((tmp_path / f"result_rank{r}.json").read_text()) for r in (0, 1)]
    for r in res:
        assert r["anatomy_unchanged_in_stage1"], r
        assert r["unused_error"] and "extra.weight" in r["unused_error"] and "extra.bias" in r["unused_error"]
    h0 = torch.load(tmp_path / "anatomy_rank0.pt")
    h1 = torch.load(tmp_path / "anatomy_rank1.pt")
    for k in h0:
        assert torch.equal(h0[k], h1[k]), f"anatomy head differs across ranks after stage 2: {k}"
    final = torch.load(tmp_path / "anatomy_rank0.pt")
    assert any(not torch.equal(final[k], v) for k, v in _anatomy(_setup()[2]).items())  # stage 2 trained it


def test_fsdp_two_processes_resume_and_are_resumed_at_another_world_size(tmp_path):
    # 1 process (steps 1-4) -> 2 FSDP processes (steps 5-9, sharded student, gathered
    # checkpoints) -> 1 process again (steps 10-12): the same loss curve as one uninterrupted run
    clip = "optim.grad_clip=1.0"
    ref = _fit_one(tmp_path / "ref", [clip])
    assert len(_fit_one(tmp_path / "fsdp", ["max_steps=4", clip])) == 4
    _torchrun("fsdp", str(tmp_path))
    res = [json.loads((tmp_path / f"fsdp_rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["anatomy_unchanged_in_stage1"] for r in res)  # BR-26 under FSDP as well
    assert res[0]["position"]["step"] == 9
    rows = _fit_one(tmp_path / "fsdp", [clip])
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    worst = max(abs(r["loss"] - q["loss"]) / abs(q["loss"]) for r, q in zip(rows, ref))
    print(f"max relative loss difference FSDP vs 1 process: {worst:.2e}")
    assert worst < 1e-4, "\n".join(f"{int(r['step'])} {r['loss']:.8g} {q['loss']:.8g}" for r, q in zip(rows, ref))


def test_embedding_across_two_processes_resumes_a_run_of_another_world_size(tmp_path):
    from leader.store import EmbeddingStore

    # an interrupted 8-process run left the part store of its rank 7 behind: 3 vectors
    part = EmbeddingStore.create(tmp_path / "emb.parts" / "rank-00007", {"a": 3})
    done = [0, 7, 29]
    part.append([f"v{i:03d}" for i in done], {"a": torch.tensor([[2.0 * i] * 3 for i in done])})
    _torchrun("embed", str(tmp_path))
    store = EmbeddingStore.open(tmp_path / "emb")
    ids, a = store.load("a")
    assert sorted(ids) == [f"v{i:03d}" for i in range(30)]
    for i, row in zip(ids, a):
        assert row.tolist() == [2.0 * int(i[1:])] * 3
    r0, r1 = (json.loads((tmp_path / f"embedded_rank{r}.json").read_text()) for r in (0, 1))
    assert not set(r0) & set(r1) and len(r0) + len(r1) == 27  # each missing id once; the 3 merged ones never
    assert abs(len(r0) - len(r1)) <= 1 and not (tmp_path / "emb.parts").exists()


def test_dataloader_workers_do_not_change_the_run(tmp_path):
    # each sample's view is seeded by (seed, stage, epoch, index): the same with 0 or 2 workers
    one = ["stage1.epochs=1", "stage2.epochs=1"]
    a = [r["loss"] for r in _fit_one(tmp_path / "w0", one)]
    b = [r["loss"] for r in _fit_one(tmp_path / "w2", [*one, "num_workers=2"])]
    assert len(a) == 6
    assert a == b


def test_rank_batches_partition_each_global_batch():
    from leader.train.distributed import RankBatchSampler, epoch_order

    order = epoch_order(18, 0, 1, 0)
    for W, A in ((1, 1), (2, 2), (4, 1), (2, 1)):
        per_rank = [list(RankBatchSampler(18, 0, 1, 0, 0, 8, r, W, A)) for r in range(W)]
        assert len({len(p) for p in per_rank}) == 1  # same number of micro-batches on every rank
        got = sorted(i for p in per_rank for mb in p for i in mb if i >= 0)
        assert got == sorted(order)
        # micro-step m of global step k holds order[k*8 + m*W*mb ...]
        mb = 8 // (W * A)
        first = [i for r in range(W) for i in per_rank[r][0]]
        assert first == order[:W * mb]
    # resume from global sample 8 at another world size: the same remaining samples
    left = [i for r in range(2) for mb in RankBatchSampler(18, 0, 1, 0, 8, 8, r, 2, 1) for i in mb if i >= 0]
    assert sorted(left) == sorted(order[8:])


if __name__ == "__main__" and len(sys.argv) > 2:
    {"worker": _worker, "embed": _embed_worker, "fsdp": _fsdp_worker}[sys.argv[1]](Path(sys.argv[2]))
