"""Shared helpers of the benchmarks (not part of the test suite).

Every benchmark prints a ratio of two things measured side by side in the same process,
interleaved (A, B, A, B, ...) so that load from other processes on a shared machine hits both.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# one compute thread by default: on a shared CPU, OpenMP threads spin-wait and inflate both wall
# and CPU time; BENCH_THREADS=N to change (GPU benchmarks ignore it)
os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("BENCH_THREADS", "1"))


def machine() -> str:
    """One line: CPU model, cores, torch threads, load average, GPU."""
    import torch

    cpu = platform.processor() or "cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__.split('+')[0]} "
            f"({torch.get_num_threads()} threads), {gpu}, load avg {load:.1f} at start")


def interleave(fns: dict, rounds: int = 3) -> dict[str, list[float]]:
    """Call each ``fn() -> seconds or list of seconds`` in turn, ``rounds`` times; all samples per name."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            v = fn()
            out[k] += v if isinstance(v, list) else [v]
    return out


def med(xs) -> float:
    return statistics.median(xs)


def clock() -> float:
    return time.perf_counter()


def cpu_clock() -> float:
    """CPU seconds of this process, all threads (robust to other tenants on a shared machine)."""
    return time.process_time()


def phantom_pack(root: Path, n: int, size: int):
    """A phantom pack (generated once, reused by later runs)."""
    from leader.manifest import Manifest
    from leader.phantoms import make_phantom_pack

    m_file = root / "manifest.parquet"
    if m_file.exists():
        m = Manifest.load(m_file)
        if len(m) >= n:
            return m.subset(list(range(n)))
    return make_phantom_pack(root, n_images=n, size=size, seed=0)


def header(title: str, command: str) -> None:
    print(f"# {title}")
    print(f"command: {command}")
    print(f"machine: {machine()}")


def demo_setup(work: Path, n_pairs: int, batch: int, S: int = 224, workers: int = 0, extra=()):
    """Phantom data (raw PNGs + shards), the demo-quick config/student and the demo teachers."""
    import pandas as pd
    import timm
    import torch

    from leader.config import load_config
    from leader.models.student import LeaderModel
    from leader.patches import disease_patches, healthy_patches
    from leader.shards import write_shards
    from leader.teachers.base import InputSpec
    from leader.teachers.module import ModuleTeacher

    m = phantom_pack(work / "pack", max(24, n_pairs // 2), 512)
    pairs = pd.concat([disease_patches(m, on_bad_box="skip")[0], healthy_patches(m, n_per_image=2, seed=0)],
                      ignore_index=True).iloc[:n_pairs].reset_index(drop=True)
    if not (work / "shards" / "index.json").exists():
        write_shards(m, work / "shards", image_size=S, patches=pairs, shard_size=16, progress=False)
    torch.manual_seed(0)
    teachers = {
        "disease": ModuleTeacher("disease", timm.create_model("resnet18", num_classes=0), InputSpec(size=128)),
        "anatomy": ModuleTeacher("anatomy", timm.create_model("convnext_atto", num_classes=0), InputSpec(size=128)),
    }
    cfg = load_config("demo-quick", ["stage2.epochs=1", f"stage2.batch_size={batch}", "device=cpu",
                                     "checkpoint_every=0", f"num_workers={workers}", "optim.warmup_steps=0", *extra])

    def student(ts=teachers):
        torch.manual_seed(0)
        sc = cfg["student"]
        return LeaderModel.for_teachers(ts, backbone=sc["backbone"], img_size=S, backbone_kwargs=sc["backbone_kwargs"])

    return m, pairs, teachers, cfg, student
