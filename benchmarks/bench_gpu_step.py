"""One LeADER training configuration at paper scale on a GPU: images/s, memory, model FLOP utilisation.

    benchmarks/gpu_check.sh                      # one GPU, < 5 minutes
    .venv/bin/python benchmarks/bench_gpu_step.py [--batch 64] [--steps 12] [--compile] [--channels-last]
    torchrun --nproc_per_node 8 benchmarks/bench_gpu_step.py       # the same on 8 GPUs (DDP)

Stage 2 of Algorithm 1 (the heavier stage: image + patch through the student and both
teachers) with the project's ``Trainer`` on synthetic in-memory data: a Swin-B student
(``swin_base_patch4_window7_224``, paper §4) and two frozen stand-in teachers - disease: a
ResNet-50 trunk + fixed projection to 1376-d (the width of CXR Foundation, an API-only model),
anatomy: ResNet-50, 2048-d (Adam). bf16 autocast, fused AdamW, channels_last.

Reported: images/s through the student (images + patches, per GPU and total), peak memory,
FLOPs per step (``torch.utils.flop_counter``: student forward+backward + teachers forward), and
MFU = achieved FLOP/s / the GPU's dense bf16 peak (table below, or ``--peak-tflops``).
``--device cpu --student test_vit --img 32 ...`` runs the same script on a CPU (smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: dense bf16 tensor-core peak, TFLOP/s (vendor datasheets; sparsity not counted)
PEAK_BF16 = {"H200": 989, "H100 SXM": 989, "H100 80GB HBM3": 989, "H100 NVL": 835, "H100 PCIe": 756, "H100": 756,
             "GH200": 989, "B200": 2250, "A100": 312, "A800": 312, "L40S": 362, "L40": 181, "A6000": 155,
             "RTX 6000 Ada": 364, "L4": 121, "A10G": 70, "A10": 125, "4090": 165}


def _peak(name: str) -> float | None:
    for k in sorted(PEAK_BF16, key=len, reverse=True):
        if k.lower() in name.lower():
            return float(PEAK_BF16[k])
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--student", default="swin_base_patch4_window7_224")
    ap.add_argument("--teacher-arch", default="resnet50")
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64, help="pairs per GPU per step (2x images through every network)")
    ap.add_argument("--steps", type=int, default=12, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args()
    import timm
    import torch
    from torch.utils.data import Dataset
    from torch.utils.flop_counter import FlopCounterMode

    from leader.config import load_config
    from leader.models.student import LeaderModel
    from leader.teachers.base import InputSpec
    from leader.teachers.module import ModuleTeacher
    from leader.train import distributed as D
    from leader.train import loop
    from leader.train.loop import Trainer

    info, dev = D.setup(a.device)
    torch.manual_seed(0)
    t_build = time.perf_counter()
    trunk = timm.create_model(a.teacher_arch, pretrained=False, num_classes=0)
    dis = torch.nn.Sequential(trunk, torch.nn.Linear(trunk.num_features, 1376))
    teachers = {"disease": ModuleTeacher("disease", dis, InputSpec(size=a.img), dim=1376),
                "anatomy": ModuleTeacher("anatomy", timm.create_model(a.teacher_arch, pretrained=False, num_classes=0),
                                         InputSpec(size=a.img))}
    model = LeaderModel.for_teachers(teachers, backbone=a.student, img_size=a.img)
    n_params = sum(p.numel() for p in model.parameters())
    W = info.world_size
    steps = a.warmup + a.steps
    n = steps * a.batch * W

    class Synthetic(Dataset):
        transform = None

        def __len__(self):
            return n

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            x = torch.rand(2, 1, a.img, a.img, generator=g)
            return {"image": x[0], "patch": x[1], "image_id": f"i{i}", "patch_id": f"p{i}", "index": i}

    cfg = load_config("paper", [f"stage2.batch_size={a.batch * W}", "stage2.epochs=1", f"precision={a.precision}",
                                "checkpoint_every=0", f"num_workers={4 if dev.type == 'cuda' else 0}",
                                "optim.warmup_steps=0", f"compile={str(a.compile).lower()}",
                                f"channels_last={'false' if a.no_channels_last else 'auto'}", f"max_steps={steps}"])
    out = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    trainer = Trainer(model, teachers, cfg, out, device=dev)
    build_s = time.perf_counter() - t_build

    stamps: list[float] = []
    orig_write = loop.LossLog.write

    def write(self, row):
        orig_write(self, row)
        stamps.append(time.perf_counter())

    loop.LossLog.write = write
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    trainer.fit(None, Synthetic())
    total_s = time.perf_counter() - t0
    step_s = [b - a_ for a_, b in zip(stamps[a.warmup - 1:], stamps[a.warmup:])] if info.is_main else []
    mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")

    # FLOPs of one step (per GPU): teachers forward + student forward/backward on 2B images
    x = torch.rand(2 * a.batch, 1, a.img, a.img, device=dev)
    fc = FlopCounterMode(display=False)
    with fc, loop.autocast_context(dev, a.precision):
        for t in teachers.values():
            t.embed(x)
        o = model(x)
        sum(v.float().mean() for k, v in o.items() if k != "e_da").backward()
    flops = fc.get_total_flops()
    model.zero_grad(set_to_none=True)
    if info.is_main:
        med = sorted(step_s)[len(step_s) // 2] if step_s else float("nan")
        ips = 2 * a.batch / med
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        peak = a.peak_tflops or (_peak(name) if dev.type == "cuda" else None)
        mfu = flops / med / (peak * 1e12) if peak else float("nan")
        res = {"device": name, "world_size": W, "student": a.student, "params_M": n_params / 1e6,
               "teachers": f"2 x {a.teacher_arch}", "img": a.img, "pairs_per_gpu": a.batch,
               "median_step_s": med, "images_per_s_per_gpu": ips, "images_per_s_total": ips * W,
               "peak_mem_GiB": mem, "TFLOP_per_step": flops / 1e12, "achieved_TFLOPs": flops / med / 1e12,
               "peak_bf16_TFLOPs": peak, "MFU": mfu, "compile": a.compile, "build_s": build_s, "run_s": total_s}
        print(json.dumps(res, indent=2))
        print(f"\n{name}: {ips:.0f} images/s per GPU ({ips * W:.0f} total), step {med * 1000:.0f} ms, "
              f"peak memory {mem:.1f} GiB, {flops / 1e12:.2f} TFLOP/step, MFU {mfu:.1%}")
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=2))
    D.cleanup()


if __name__ == "__main__":
    main()
