"""Fault campaign for training (issue 7; not part of the test suite).

Runs the tiny deterministic training job of ``tests/workers/train_worker.py`` once without
faults (the reference), then ``--trials`` times with faults, and reports how many runs
survived (completed after resuming) and how much finished work was lost:

* ``random-kill``: SIGKILL from outside after a random delay (seeded), repeated until the
  run completes; a kill can land anywhere, including inside a checkpoint write;
* ``point-kill``: SIGKILL at a random named fault point (:mod:`leader.faults`) and hit;
* ``disk-full``: every write past 200 kB fails with EFBIG (``RLIMIT_FSIZE``) after a few
  steps, then the run is resumed with space again.

"Data lost" counts runs whose final weights or loss log differ from the reference, or that
found no loadable checkpoint after a kill although one had been completed before.

    .venv/bin/python benchmarks/faults_train.py --trials 20 --json out/faults_train.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _bench  # noqa: F401  (sets paths and thread env)

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "workers" / "train_worker.py"
POINTS = ["train.after_step", "train.before_update", "ckpt.after_model", "ckpt.after_files",
          "ckpt.before_rename", "ckpt.after_rename", "ckpt.after_link", "ckpt.prune"]


def run(run_dir, *args, fault=None, kill_after=None):
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    env.pop("LEADER_FAULT", None)
    if fault:
        env["LEADER_FAULT"] = fault
    p = subprocess.Popen([sys.executable, str(WORKER), str(run_dir), *map(str, args)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    return p.returncode, err


def fingerprint(run_dir):
    from safetensors.torch import load_file

    w = load_file(str(Path(run_dir) / "final" / "model.safetensors"))
    with open(Path(run_dir) / "losses.csv", newline="") as fh:
        rows = [(r["step"], r["loss"]) for r in csv.DictReader(fh)]
    return {k: v.numpy().tobytes() for k, v in w.items()}, rows


def has_checkpoint(run_dir):
    sys.path.insert(0, str(ROOT / "src"))
    from leader.train.checkpoints import CheckpointDir

    return CheckpointDir(Path(run_dir) / "checkpoints").latest() is not None


def progress(run_dir):
    """Position of the newest complete checkpoint (``-1`` when none)."""
    sys.path.insert(0, str(ROOT / "src"))
    from leader.train.checkpoints import CheckpointDir

    p = CheckpointDir(Path(run_dir) / "checkpoints").latest()
    return -1 if p is None else json.loads((p / "COMMIT.json").read_text())["position"]["step"]


def trial(kind, rng, ref, base_s):
    spec = None
    d = Path(tempfile.mkdtemp(prefix=f"fault-{kind}-"))
    run_dir = d / "run"
    kills, lost, ok_ckpt_seen = 0, False, False
    scale = 1.0  # grows while kills land before any new checkpoint (a slow, loaded machine)
    for attempt in range(200):
        before = progress(run_dir)
        if kind == "random-kill":
            rc, err = run(run_dir, kill_after=rng.uniform(0.3, 1.0) * base_s * scale)
            scale = scale * 1.3 if progress(run_dir) <= before else 1.0
        elif kind == "point-kill" and attempt == 0:
            spec = f"{rng.choice(POINTS)}:{rng.randint(1, 12)}:kill"
            rc, err = run(run_dir, fault=spec)
        elif kind == "disk-full" and attempt == 0:
            rc, err = run(run_dir, "--max-steps", rng.randint(1, 10))
            rc, err = run(run_dir, "--fsize-limit", 200_000)
            if rc != 3 or "could not write" not in err:
                lost = True
        else:
            rc, err = run(run_dir)
        if rc == 0 and (run_dir / "final" / "model.safetensors").is_file():
            break
        if rc not in (-9, 3):
            return {"kind": kind, "survived": False, "kills": kills, "lost": True, "error": err[-500:]}
        kills += rc == -9
        now = has_checkpoint(run_dir)
        if ok_ckpt_seen and not now:
            lost = True
        ok_ckpt_seen = ok_ckpt_seen or now
    else:  # never finished within the attempts: not a survival, but nothing was lost either
        return {"kind": kind, "survived": False, "kills": kills, "lost": lost}
    same = fingerprint(run_dir) == ref
    return {"kind": kind, "survived": True, "kills": kills, "lost": lost or not same, "fault": spec}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=12, help="trials per kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    ref_dir = Path(tempfile.mkdtemp(prefix="fault-ref-")) / "run"
    t0 = time.perf_counter()
    rc, err = run(ref_dir)
    base_s = time.perf_counter() - t0
    assert rc == 0, err
    ref = fingerprint(ref_dir)
    print(f"{_bench.machine()}\nreference run {base_s:.1f} s")
    results = []
    for kind in ("random-kill", "point-kill", "disk-full"):
        for i in range(a.trials):
            r = trial(kind, rng, ref, base_s)
            results.append(r)
            print(f"{kind:12s} trial {i:2d}: kills={r['kills']} survived={r['survived']} lost={r['lost']}"
                  f"{' fault=' + r['fault'] if r.get('fault') else ''}", flush=True)
    print("\n| job | fault | runs | kills | survived | data lost |\n|---|---|---|---|---|---|")
    summary = []
    for kind in ("random-kill", "point-kill", "disk-full"):
        rs = [r for r in results if r["kind"] == kind]
        row = {"job": "train", "fault": kind, "runs": len(rs), "kills": sum(r["kills"] for r in rs),
               "survived": sum(r["survived"] for r in rs), "lost": sum(r["lost"] for r in rs)}
        summary.append(row)
        print(f"| train | {kind} | {row['runs']} | {row['kills']} | {row['survived']} | {row['lost']} |")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"machine": _bench.machine(), "summary": summary, "trials": results},
                                           indent=2))


if __name__ == "__main__":
    main()
