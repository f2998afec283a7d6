"""Issue 7: training survives SIGKILL anywhere, a full disk and NaN losses without losing work.

A real (tiny, deterministic) training run in a subprocess (tests/workers/train_worker.py) is
killed at named fault points (``LEADER_FAULT``, :mod:`leader.faults`), including in the middle
of every step of a checkpoint write, then resumed; the final weights must be bit-identical to
an uninterrupted run and the loss log must hold each step exactly once.
"""

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from leader import faults
from leader.errors import WriteError
from leader.train.checkpoints import CheckpointDir, verify_checkpoint

WORKER = Path(__file__).parent / "workers" / "train_worker.py"


def _run(run_dir, *args, fault=None, timeout=300):
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    env.pop(faults.ENV, None)
    if fault:
        env[faults.ENV] = fault
    return subprocess.run([sys.executable, str(WORKER), str(run_dir), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _weights(run_dir):
    return load_file(str(Path(run_dir) / "final" / "model.safetensors"))


def _loss_rows(run_dir):
    with open(Path(run_dir) / "losses.csv", newline="") as fh:
        return [(r["stage"], r["epoch"], r["step"], r["loss"]) for r in csv.DictReader(fh)]


def _assert_same_run(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"weights differ after kill+resume: {k}"
    ra, rb = _loss_rows(a), _loss_rows(b)
    assert [r[2] for r in rb] == [str(i) for i in range(1, len(rb) + 1)], "each step logged exactly once"
    assert ra == rb  # same steps, bit-identical loss values


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ref = tmp_path_factory.mktemp("ref") / "run"
    r = _run(ref)
    assert r.returncode == 0, r.stderr[-3000:]
    return ref


# (fault spec, what it interrupts); hit counts >= 2 for checkpoint points so that every killed
# process has committed at least one new checkpoint first (the chain always makes progress)
CHAIN = [
    ("ckpt.after_model:1:kill", "the very first checkpoint: a loss row logged, no checkpoint yet"),
    ("train.after_step:3:kill", "between steps, after the loss row was logged"),
    ("train.before_update:2:kill", "after the backward pass, before the optimizer step"),
    ("ckpt.after_model:2:kill", "checkpoint: model written, optimizer state not yet"),
    ("ckpt.after_files:3:kill", "checkpoint: files written, no COMMIT.json yet"),
    ("ckpt.before_rename:2:kill", "checkpoint: committed in its temporary folder, not renamed"),
    ("ckpt.after_rename:2:kill", "checkpoint renamed, 'last' link not yet updated"),
    ("ckpt.after_link:4:kill", "after the link, before old checkpoints are pruned"),
    ("ckpt.prune:3:kill", "while an old checkpoint is being deleted"),
]


def test_kill_at_every_fault_point_then_resume_is_bit_identical(reference, tmp_path):
    run = tmp_path / "run"
    for spec, what in CHAIN:
        r = _run(run, fault=spec)
        assert r.returncode == -9, f"{spec} ({what}) did not kill the run: rc={r.returncode}\n{r.stderr[-2000:]}"
        ckpts = CheckpointDir(run / "checkpoints")
        latest = ckpts.latest()
        # never a half-written checkpoint: whatever is found verifies against its commit record
        assert latest is None or verify_checkpoint(latest) is None, f"after {spec}"
        assert latest is not None or spec == CHAIN[0][0]
    r = _run(run)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(reference, run)
    # the pruning left the newest two complete checkpoints and no temporary folders
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert [n for n in names if n.startswith("ckpt-")] == [n for n in names if n.startswith("ckpt-")][-2:]
    assert not [n for n in names if n.startswith(".")], names
    assert os.readlink(run / "checkpoints" / "last") == max(n for n in names if n.startswith("ckpt-"))


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(reference, tmp_path):
    run = tmp_path / "run"
    r = _run(run, "--max-steps", 4)
    assert r.returncode == 0, r.stderr[-2000:]
    before = CheckpointDir(run / "checkpoints").latest()
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in before.iterdir()}
    # a real kernel error: every write past 200 kB fails with EFBIG (the model file is larger)
    r = _run(run, "--fsize-limit", 200_000)
    assert r.returncode == 3, r.stderr[-2000:]
    msg = r.stderr
    assert "could not write" in msg and "file-size limit" in msg and f"previous checkpoint {before}" in msg
    after = CheckpointDir(run / "checkpoints").latest()
    assert after == before and verify_checkpoint(after) is None
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in after.iterdir()} == digest
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    # with space again the run completes exactly as if nothing had happened
    r = _run(run)
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_same_run(reference, run)


def test_a_new_run_refuses_a_folder_with_checkpoints(reference, tmp_path):
    import shutil

    from leader.train.loop import Trainer

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    trainer, tw = _inprocess_trainer(run)
    with pytest.raises(FileExistsError, match="--resume"):
        trainer.fit(tw.Images(), tw.Images(pairs=True))
    assert isinstance(trainer, Trainer)


@pytest.mark.parametrize("action,reason", [("enospc", "the disk is full"), ("erofs", "the filesystem is read-only")])
def test_injected_write_errors_name_the_reason(tmp_path, monkeypatch, action, reason):
    ck = CheckpointDir(tmp_path / "checkpoints")

    def write(d):
        for f in ("model.safetensors", "config.json", "training_state.pt"):
            (d / f).write_bytes(f.encode() * 10)

    first = ck.save(write, {"step": 1})
    monkeypatch.setenv(faults.ENV, f"ckpt.after_files:1:{action}")
    faults.reset()
    with pytest.raises(WriteError, match=reason) as ei:
        ck.save(write, {"step": 2})
    faults.reset()
    assert str(first) in str(ei.value) and isinstance(ei.value, OSError)
    assert ck.latest() == first
    assert sorted(p.name for p in ck.path.iterdir()) == ["ckpt-000001", "last"]


def test_unreadable_samples_are_skipped_and_reported(tmp_path):
    run = tmp_path / "run"
    r = _run(run, "--bad-every", 6, "--epochs", "1,1", "--max-skip", 0.2)  # img5 and img11 raise ImageReadError
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    rep = json.loads((run / "skipped.json").read_text())
    assert rep["policy"] == "skip" and rep["count"] == 2 and rep["occurrences"] == 4  # 2 images x 2 stages
    assert rep["counts_by_reason"] == {"ImageReadError": 4}
    assert {(it["stage"], it["id"]) for it in rep["items"]} == {(1, "img5"), (1, "img11"), (2, "img5"), (2, "img11")}
    assert all("/data/img" in it["reason"] and "truncated PNG" in it["reason"] for it in rep["items"])
    assert "2 unreadable sample(s) were skipped" in r.stderr
    assert "skipped unreadable sample img5" in r.stderr


def test_raise_policy_stops_at_the_first_unreadable_sample_with_its_context(tmp_path):
    from leader.errors import ImageReadError

    trainer, tw = _inprocess_trainer(tmp_path / "run", **{"data.on_error": "raise"})
    with pytest.raises(ImageReadError, match=r"^/data/img\d+\.png: truncated PNG .*\(stage 1, epoch 0, sample img\d+;"):
        trainer.fit(tw.Images(bad_every=6), None)


def test_too_many_unreadable_samples_stop_the_run(tmp_path):
    run = tmp_path / "run"
    r = _run(run, "--bad-every", 2, "--epochs", "1,1", "--max-skip", 0.2)  # half the data is broken
    assert r.returncode != 0
    assert "max_skip_fraction" in r.stderr and "skipped.json" in r.stderr
    import json

    assert json.loads((run / "skipped.json").read_text())["count"] >= 2


def _inprocess_trainer(run, **over):
    sys.path.insert(0, str(WORKER.parent))
    try:
        import train_worker as tw
    finally:
        sys.path.pop(0)
    from leader.config import load_config
    from leader.models.student import LeaderModel
    from leader.train.loop import Trainer

    sets = ["stage1.epochs=2", "stage2.epochs=1", "stage1.batch_size=4", "stage2.batch_size=4",
            "optim.warmup_steps=0", "precision=fp32", "checkpoint_every=1", "device=cpu", "augment.enabled=false"]
    sets += [f"{k}={v}" for k, v in over.items()]
    cfg = load_config("demo-quick", sets)
    teachers = {"disease": tw.teacher("disease", 24, 1), "anatomy": tw.teacher("anatomy", 40, 2)}
    torch.manual_seed(0)
    model = LeaderModel.for_teachers(teachers, backbone="swin_tiny_patch4_window7_224", img_size=tw.S,
                                     backbone_kwargs=tw.TINY)
    return Trainer(model, teachers, cfg, run, device=torch.device("cpu")), tw


def test_nan_loss_stops_with_step_stage_and_loss_named_and_keeps_last_checkpoint(tmp_path):
    trainer, tw = _inprocess_trainer(tmp_path / "run")
    t = trainer.teachers["disease"]
    calls = {"n": 0}
    orig = t.embed

    def poisoned(x, ids=None):
        calls["n"] += 1
        out = orig(x, ids=ids)
        return out * float("nan") if calls["n"] == 3 else out

    t.embed = poisoned
    with pytest.raises(FloatingPointError) as ei:
        trainer.fit(tw.Images(), tw.Images(pairs=True))
    msg = str(ei.value)
    assert "stage 1 epoch 0 step 3" in msg and "non-finite: loss_disease_image" in msg
    last = CheckpointDir(tmp_path / "run" / "checkpoints").latest()
    assert f"last good checkpoint {last}" in msg
    import json

    assert json.loads((last / "COMMIT.json").read_text())["position"]["step"] == 2
    assert verify_checkpoint(last) is None


def test_infinite_gradient_is_caught_when_clipping(tmp_path):
    trainer, tw = _inprocess_trainer(tmp_path / "run", **{"optim.grad_clip": 1.0})
    p = next(trainer.model.backbone.parameters())
    p.register_hook(lambda g: torch.full_like(g, float("inf")))
    before = p.detach().clone()
    with pytest.raises(FloatingPointError, match=r"stage 1 epoch 0 step 1: the gradient norm is inf"):
        trainer.fit(tw.Images(), tw.Images(pairs=True))
    assert torch.equal(p.detach(), before), "the optimizer must not step on a non-finite gradient"
    assert CheckpointDir(tmp_path / "run" / "checkpoints").latest() is None
