"""leader teachers cache: cached embeddings equal the online teacher on the same views; training
reads them instead of running the teacher; the CLI chain shard -> cache -> train -> embed works."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from leader.store import EmbeddingStore
from leader.teachers.base import InputSpec
from leader.teachers.cache import CachedTeacher, apply_teacher_cache, cache_teacher, teacher_view_info
from leader.teachers.module import ModuleTeacher
from leader.views import fixed_view_seed, make_view, view_id
from leader.transforms import PairedAugment

S = 32
AUG = dict(degrees=8.0, translate=0.05, scale=(0.9, 1.1))


class _Imgs(Dataset):
    def __init__(self, n=10, seed=0, prefix="img", transform=None):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 1, S, S, generator=g)
        self.prefix, self.transform = prefix, transform

    def __len__(self):
        return len(self.x)

    def item_id(self, i):
        return f"{self.prefix}{i}"

    def __getitem__(self, i):
        x = self.x[i] if self.transform is None else self.transform(self.x[i])
        return {"image": x, "id": self.item_id(i), "index": i}


class _Pairs(_Imgs):
    def __getitem__(self, i):
        t = self.transform or (lambda v: v)
        return {"image": t(self.x[i]), "patch": t(self.x[i].flip(-1)), "image_id": f"img{i}",
                "patch_id": f"img{i}::p", "index": i}


def _teacher(name, dim, seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, dim))
    return ModuleTeacher(name, net, InputSpec(size=32, channels=3))


def _patches_ds(n=10):
    ds = _Imgs(n)
    ds.x = ds.x.flip(-1)
    ds.prefix = "img"
    ds.item_id = lambda i: f"img{i}::p"
    return ds


def test_cache_holds_plain_and_fixed_views(tmp_path):
    t = _teacher("disease", 12, 1)
    aug = PairedAugment(**AUG)
    store = cache_teacher(t, [_Imgs(6)], tmp_path / "c", views=2, augment=aug, augment_params=AUG, view_seed=5,
                          image_size=S, batch_size=4, device="cpu", precision="fp32")
    assert len(store) == 6 * 3
    ds = _Imgs(6)
    x0 = ds[4]["image"]
    np.testing.assert_allclose(store.get(["img4"], "embedding"), t.embed(x0[None]).numpy(), rtol=1e-5, atol=1e-6)
    v1 = make_view(aug, x0, fixed_view_seed(5, "img4", 1))
    np.testing.assert_allclose(store.get([view_id("img4", 1)], "embedding"), t.embed(v1[None]).numpy(),
                               rtol=1e-5, atol=1e-6)
    info = teacher_view_info(CachedTeacher(t, tmp_path / "c"))
    assert info["views"] == 2 and info["view_seed"] == 5 and info["image_size"] == S
    # a rerun adds nothing; another teacher's cache is refused
    assert len(cache_teacher(t, [_Imgs(6)], tmp_path / "c", views=2, augment=aug, augment_params=AUG, view_seed=5,
                             image_size=S, device="cpu", precision="fp32")) == 18
    with pytest.raises(ValueError, match="another teacher"):
        CachedTeacher(_teacher("disease", 12, 99), tmp_path / "c")


def test_missing_ids_error_or_online_fallback(tmp_path):
    t = _teacher("disease", 12, 1)
    cache_teacher(t, [_Imgs(3)], tmp_path / "c", device="cpu", precision="fp32")
    x = _Imgs(5).x
    with pytest.raises(KeyError, match="not in cache"):
        CachedTeacher(t, tmp_path / "c").embed(x, ids=[f"img{i}" for i in range(5)])
    got = CachedTeacher(t, tmp_path / "c", on_miss="online").embed(x, ids=[f"img{i}" for i in range(5)])
    np.testing.assert_allclose(got.numpy(), t.embed(x).numpy(), rtol=1e-5, atol=1e-6)


def _cfg(extra=()):
    from leader.config import load_config

    return load_config("demo-quick", ["stage1.epochs=2", "stage2.epochs=1", "stage1.batch_size=4",
                                      "stage2.batch_size=4", "precision=fp32", "device=cpu", "checkpoint_every=0",
                                      *extra])


def _student(teachers):
    from leader.models.student import LeaderModel

    torch.manual_seed(0)
    return LeaderModel.for_teachers(teachers, backbone="test_vit", img_size=S)


def test_training_on_the_cache_equals_online_teachers_on_the_same_views(tmp_path):
    from leader.train.loop import Trainer, read_losses

    aug = PairedAugment(**AUG)
    online = {"disease": _teacher("disease", 12, 1), "anatomy": _teacher("anatomy", 9, 2)}
    cache_teacher(online["disease"], [_Imgs(8), _patches_ds(8)], tmp_path / "cache", views=3, augment=aug,
                  augment_params=AUG, view_seed=7, image_size=S, device="cpu", precision="fp32")
    # per-teacher choice: disease cached, anatomy online
    mixed = apply_teacher_cache(online, {"disease": tmp_path / "cache"})
    assert isinstance(mixed["disease"], CachedTeacher) and mixed["anatomy"] is online["anatomy"]
    calls = {"n": 0}
    orig = online["disease"]._forward

    def counting(x, ids):
        calls["n"] += 1
        return orig(x, ids)

    online["disease"]._forward = counting
    tr = Trainer(_student(mixed), mixed, _cfg(), tmp_path / "cached", device=torch.device("cpu"))
    assert tr.views.mode == "cached" and tr.views.n_views == 3
    tr.fit(_Imgs(8), _Pairs(8))  # un-augmented: the trainer's view policy augments
    assert calls["n"] == 0  # the disease teacher never ran: its targets came from the cache
    online["disease"]._forward = orig
    # the same views with both teachers online give the same losses
    ref = Trainer(_student(online), online, _cfg(), tmp_path / "online", device=torch.device("cpu"))
    assert ref.views.mode == "random"
    ref.views = tr.views
    ref.fit(_Imgs(8), _Pairs(8))
    a = [r["loss"] for r in read_losses(tmp_path / "cached" / "losses.csv")]
    b = [r["loss"] for r in read_losses(tmp_path / "online" / "losses.csv")]
    assert len(a) == len(b) == 2 * 2 + 2
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_plain_cache_turns_augmentation_off_and_api_stores_stay_online(tmp_path):
    from leader.teachers.store_teacher import EmbeddingStoreTeacher
    from leader.train.loop import Trainer

    t = _teacher("disease", 12, 1)
    cache_teacher(t, [_Imgs(4)], tmp_path / "c", device="cpu", precision="fp32", image_size=S)
    teachers = apply_teacher_cache({"disease": t}, ["disease=" + str(tmp_path / "c")])
    assert Trainer(_student(teachers), teachers, _cfg(), tmp_path / "r", device=torch.device("cpu")).views.mode == "plain"
    api = EmbeddingStore.create(tmp_path / "api", {"embedding": 12})
    api.append(["img0"], {"embedding": np.zeros((1, 12), np.float32)})
    assert teacher_view_info(EmbeddingStoreTeacher("disease", tmp_path / "api")) is None


@pytest.mark.slow
def test_cli_shard_cache_train_embed(tmp_path):
    from leader.cli import main
    from leader.phantoms import make_phantom_pack
    from leader.teachers.module import save_teacher
    from leader.train.loop import read_losses

    make_phantom_pack(tmp_path / "pack", n_images=8, size=96, seed=1)
    import timm

    for name, seed in (("disease", 1), ("anatomy", 2)):
        torch.manual_seed(seed)
        net = timm.create_model("test_resnet", pretrained=False, num_classes=0)
        save_teacher(net, "test_resnet", {}, InputSpec(size=32, channels=3), name, tmp_path / name)
    common = ["--config", "demo-quick", "--set", "student.img_size=32", "--set", "student.backbone=test_vit",
              "--set", "student.backbone_kwargs={}"]
    m = str(tmp_path / "pack" / "manifest.parquet")
    assert main(["data", "shard", "--manifest", m, "--out", str(tmp_path / "sh"), "--shard-size", "3", *common]) == 0
    assert main(["teachers", "cache", "--teacher", f"disease={tmp_path / 'disease'}", "--shards", str(tmp_path / "sh"),
                 "--out", str(tmp_path / "cache"), "--views", "2", *common]) == 0
    assert main(["train", "--shards", str(tmp_path / "sh"), "--stream", "--teacher", f"disease={tmp_path / 'disease'}",
                 "--teacher", f"anatomy={tmp_path / 'anatomy'}", "--teacher-cache", f"disease={tmp_path / 'cache' / 'disease'}",
                 "--out", str(tmp_path / "run"), *common, "--set", "stage1.epochs=1", "--set", "stage2.epochs=1",
                 "--set", "stage1.batch_size=4", "--set", "stage2.batch_size=4", "--set", "device=cpu"]) == 0
    rows = read_losses(tmp_path / "run" / "losses.csv")
    assert rows and all(math.isfinite(r["loss"]) for r in rows)
    assert main(["embed", "--checkpoint", str(tmp_path / "run" / "final"), "--shards", str(tmp_path / "sh"),
                 "--out", str(tmp_path / "emb"), "--device", "cpu", "--index", "exact"]) == 0
    st = EmbeddingStore.open(tmp_path / "emb")
    assert len(st) == 8 and (tmp_path / "emb" / "index-e_da-exact" / "index.faiss").is_file()
    # the same command gives the same weights (the initial student comes from the run seed) ...
    train = ["train", "--shards", str(tmp_path / "sh"), "--stream", "--teacher", f"disease={tmp_path / 'disease'}",
             "--teacher", f"anatomy={tmp_path / 'anatomy'}", "--teacher-cache", f"disease={tmp_path / 'cache' / 'disease'}",
             *common, "--set", "stage1.epochs=1", "--set", "stage2.epochs=1", "--set", "stage1.batch_size=4",
             "--set", "stage2.batch_size=4", "--set", "device=cpu"]
    assert main([*train, "--out", str(tmp_path / "run2")]) == 0
    from safetensors.torch import load_file

    w1, w2 = (load_file(str(tmp_path / r / "final" / "model.safetensors")) for r in ("run", "run2"))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    # ... a new run refuses a folder that holds checkpoints (exit 2, nothing overwritten) ...
    assert main([*train, "--out", str(tmp_path / "run")]) == 2
    # ... and an embedding store made with other weights is not silently extended
    assert main([*train, "--out", str(tmp_path / "run3"), "--set", "seed=1"]) == 0
    assert main(["embed", "--checkpoint", str(tmp_path / "run3" / "final"), "--shards", str(tmp_path / "sh"),
                 "--out", str(tmp_path / "emb"), "--device", "cpu"]) == 2
    assert main(["embed", "--checkpoint", str(tmp_path / "run2" / "final"), "--shards", str(tmp_path / "sh"),
                 "--out", str(tmp_path / "emb"), "--device", "cpu"]) == 0  # same weights, another folder: fine
