"""A tiny but real LeADER training run for the fault-injection tests (tests/test_faults_train.py).

Usage: python train_worker.py RUN_DIR [--max-steps N] [--fsize-limit BYTES] [--bad-every K]

Deterministic on CPU (one thread, deterministic algorithms): the same command gives
bit-identical weights, with or without kills and resumes in between. Always resumes from the
newest complete checkpoint of RUN_DIR. Exit codes: 0 done, 3 WriteError, 4 FloatingPointError.
"""

import argparse
import resource
import signal
import sys

import torch
import torch.nn as nn
from torch.utils.data import Dataset

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

from leader.config import load_config  # noqa: E402
from leader.errors import ImageReadError, WriteError  # noqa: E402
from leader.models.student import LeaderModel  # noqa: E402
from leader.teachers.base import InputSpec  # noqa: E402
from leader.teachers.module import ModuleTeacher  # noqa: E402
from leader.train.loop import Trainer  # noqa: E402

S = 64
TINY = {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2), "window_size": 2}


class Images(Dataset):
    """``n`` seeded random images; with ``bad_every`` every k-th one is 'unreadable'."""

    transform = None

    def __init__(self, n=12, bad_every=0, pairs=False):
        self.x = torch.rand(n, 1, S, S, generator=torch.Generator().manual_seed(0))
        self.bad_every, self.pairs = bad_every, pairs

    def __len__(self):
        return len(self.x)

    def item_id(self, i):
        return f"img{i}"

    def __getitem__(self, i):
        if self.bad_every and i % self.bad_every == self.bad_every - 1:
            raise ImageReadError(f"/data/img{i}.png: truncated PNG (IEND chunk missing)")
        if self.pairs:
            return {"image": self.x[i], "patch": self.x[i].flip(-1), "image_id": f"img{i}",
                    "patch_id": f"img{i}::p", "index": i}
        return {"image": self.x[i], "id": f"img{i}", "index": i}


def teacher(name, dim, seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, dim))
    return ModuleTeacher(name, net, InputSpec(size=32, channels=3))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--fsize-limit", type=int, default=0)
    ap.add_argument("--bad-every", type=int, default=0)
    ap.add_argument("--epochs", default="3,2")
    ap.add_argument("--max-skip", type=float, default=0.05)
    a = ap.parse_args(argv)
    e1, e2 = a.epochs.split(",")
    cfg = load_config("demo-quick", [f"stage1.epochs={e1}", f"stage2.epochs={e2}", "stage1.batch_size=4",
                                     "stage2.batch_size=4", "optim.warmup_steps=0", "precision=fp32",
                                     "checkpoint_every=1", "device=cpu", "augment.enabled=false",
                                     f"max_steps={a.max_steps}", f"data.max_skip_fraction={a.max_skip}"])
    teachers = {"disease": teacher("disease", 24, 1), "anatomy": teacher("anatomy", 40, 2)}
    torch.manual_seed(0)
    model = LeaderModel.for_teachers(teachers, backbone="swin_tiny_patch4_window7_224", img_size=S,
                                     backbone_kwargs=TINY)
    trainer = Trainer(model, teachers, cfg, a.run, device=torch.device("cpu"))
    if a.fsize_limit:  # every file write past this size now fails with EFBIG (a full disk, for real)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (a.fsize_limit, resource.RLIM_INFINITY))
    try:
        out = trainer.fit(Images(bad_every=a.bad_every), Images(bad_every=a.bad_every, pairs=True), resume=True)
    except WriteError as exc:
        print(f"WriteError: {exc}", file=sys.stderr)
        return 3
    except FloatingPointError as exc:
        print(f"FloatingPointError: {exc}", file=sys.stderr)
        return 4
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
