"""leader data shard: tar shards equal the raw-file datasets; streams split per rank/worker and resume."""

from __future__ import annotations

import math
import os
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from leader.patches import ImageDataset, PairDataset, PatchDataset, disease_patches, healthy_patches, landmark_patches
from leader.shards import ShardImageDataset, ShardPairDataset, ShardPatchDataset, ShardStream, write_shards


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    from leader.phantoms import make_phantom_pack

    root = tmp_path_factory.mktemp("phantoms")
    m = make_phantom_pack(root, n_images=12, size=96, seed=3)
    dis, _ = disease_patches(m, on_bad_box="skip")
    pt = pd.concat([dis, healthy_patches(m, n_per_image=2, seed=0), landmark_patches(m, size=48)], ignore_index=True)
    return m, pt


@pytest.fixture(scope="module")
def shards(pack, tmp_path_factory):
    m, pt = pack
    out = tmp_path_factory.mktemp("shards")
    idx = write_shards(m, out, image_size=32, bit_depth=8, patches=pt, shard_size=3, progress=False)
    return out, idx


def test_index_and_tar_layout(pack, shards):
    m, pt = pack
    out, idx = shards
    assert idx["n_images"] == 12 and idx["n_patches"] == len(pt) and len(idx["shards"]) == 4
    assert set(idx["label_names"]) == set(m.label_names)
    with tarfile.open(out / "shard-000001.tar") as tar:  # plain tar, WebDataset key.ext names
        names = tar.getnames()
    assert names[0] == "000000003.json" and names[1] == "000000003.png"
    assert all(n.split(".", 1)[0].isdigit() for n in names)


def test_shard_datasets_equal_raw_file_datasets(pack, shards):
    m, pt = pack
    out, _ = shards
    tol = 0.5 / 255 + 1e-6  # 8-bit quantisation
    raw, sh = ImageDataset(m, 32), ShardImageDataset(out)
    assert len(sh) == len(raw)
    for i in range(len(raw)):
        assert sh.item_id(i) == raw.item_id(i)
        np.testing.assert_allclose(sh[i]["image"].numpy(), raw[i]["image"].numpy(), atol=tol)
    rec = sh.record(5)
    assert rec["id"] == raw.item_id(5) and set(rec["labels"]) == set(m.label_names)
    assert len(rec["boxes"]) == len(m.boxes(5))
    raw_p = PatchDataset(m, pt, 32)
    shp = ShardPatchDataset(out)
    where = {raw_p.item_id(i): i for i in range(len(raw_p))}
    assert sorted(where) == sorted(shp.item_id(i) for i in range(len(shp)))
    for j in range(0, len(shp), 5):
        np.testing.assert_allclose(shp[j]["image"].numpy(), raw_p[where[shp.item_id(j)]]["image"].numpy(), atol=tol)
    pairs = pt[pt["kind"].isin(["disease", "healthy"])].reset_index(drop=True)
    raw_pairs, sh_pairs = PairDataset(m, pairs, 32), ShardPairDataset(out)
    assert len(sh_pairs) == len(raw_pairs)
    it = sh_pairs[3]
    ref = raw_pairs[int(np.flatnonzero(pairs["patch_id"] == it["patch_id"])[0])]
    assert it["image_id"] == ref["image_id"]
    np.testing.assert_allclose(it["patch"].numpy(), ref["patch"].numpy(), atol=tol)
    np.testing.assert_allclose(it["image"].numpy(), ref["image"].numpy(), atol=tol)


def test_16_bit_npy_and_rerun(pack, tmp_path):
    m, _ = pack
    idx = write_shards(m, tmp_path, image_size=32, bit_depth=16, encoding="npy", shard_size=5, progress=False)
    assert idx["n_patches"] == 0
    np.testing.assert_allclose(ShardImageDataset(tmp_path)[7]["image"].numpy(),
                               ImageDataset(m, 32)[7]["image"].numpy(), atol=1e-5)
    before = os.stat(tmp_path / "shard-000000.tar").st_mtime_ns
    write_shards(m, tmp_path, image_size=32, bit_depth=16, encoding="npy", shard_size=5, progress=False)
    assert os.stat(tmp_path / "shard-000000.tar").st_mtime_ns == before  # complete shards are skipped
    with pytest.raises(ValueError, match="another manifest"):
        write_shards(m, tmp_path, image_size=48, bit_depth=16, encoding="npy", shard_size=5, progress=False)


def test_parts_write_the_index_when_complete(pack, tmp_path):
    m, _ = pack
    assert write_shards(m, tmp_path, image_size=32, shard_size=4, part=0, num_parts=2, progress=False) is None
    idx = write_shards(m, tmp_path, image_size=32, shard_size=4, part=1, num_parts=2, progress=False)
    assert idx["n_images"] == 12


def _ids(stream_ds, loader_workers=0):
    dl = DataLoader(stream_ds, batch_size=None, num_workers=loader_workers)
    return [list(b["id"]) for b in dl]


def test_stream_splits_ranks_equally_and_resumes(shards):
    out, _ = shards
    st = ShardStream(out, "image", shuffle_buffer=4)
    all_ids = set(ShardImageDataset(out)._ids)
    per_rank = [_ids(st.rank_stream(stage=1, epoch=0, seed=0, rank=r, world_size=2, micro_batch=2)) for r in (0, 1)]
    assert [len(p) for p in per_rank] == [st.micro_batches_per_rank(2, 2)] * 2  # same steps on every rank
    flat = [i for p in per_rank for b in p for i in b]
    assert sorted(flat) == sorted(all_ids)  # 4 equal shards over 2 ranks: an exact partition
    # resume after 1 micro-batch: exactly the rest, without re-reading the skipped ones
    rest = _ids(st.rank_stream(stage=1, epoch=0, seed=0, rank=0, world_size=2, micro_batch=2, skip_micro=1))
    assert rest == per_rank[0][1:]
    # another epoch, another order
    other = _ids(st.rank_stream(stage=1, epoch=1, seed=0, rank=0, world_size=2, micro_batch=2))
    assert [i for b in other for i in b] != [i for b in per_rank[0] for i in b]
    # 3 ranks (uneven): equal step counts, samples padded by cycling
    counts = {len(_ids(st.rank_stream(stage=1, epoch=0, seed=0, rank=r, world_size=3, micro_batch=3)))
              for r in range(3)}
    assert counts == {st.micro_batches_per_rank(3, 3)}


def test_stream_with_workers_resumes_exactly(shards):
    out, _ = shards
    st = ShardStream(out, "pair", shuffle_buffer=3)
    full = _ids_pairs(st, skip=0)
    assert len(full) == st.micro_batches_per_rank(1, 2, 2)
    # every pair once: with seed 1 each worker gets two shards holding 4 + 3 of the 14 pairs
    assert len({p for b in full for p in b}) == st.n
    assert _ids_pairs(st, skip=3) == full[3:]


def _ids_pairs(st, skip):
    ds = st.rank_stream(stage=2, epoch=0, seed=1, rank=0, world_size=1, micro_batch=2, num_workers=2, skip_micro=skip)
    dl = DataLoader(ds, batch_size=None, num_workers=2)
    out = []
    for b in dl:
        assert b["image"].shape[1:] == (1, 32, 32) and b["patch"].shape == b["image"].shape
        out.append(list(b["patch_id"]))
    return out


def test_trainer_runs_on_streamed_and_random_access_shards(shards, tmp_path):
    from leader.config import load_config
    from leader.models.student import LeaderModel
    from leader.teachers.base import InputSpec
    from leader.teachers.module import ModuleTeacher
    from leader.train.loop import Trainer, read_losses

    out, _ = shards
    torch.manual_seed(0)
    teachers = {n: ModuleTeacher(n, torch.nn.Sequential(torch.nn.Conv2d(3, 4, 4, 4), torch.nn.AdaptiveAvgPool2d(1),
                                                        torch.nn.Flatten(), torch.nn.Linear(4, d)),
                                 InputSpec(size=32, channels=3)) for n, d in (("disease", 6), ("anatomy", 7))}
    model = LeaderModel.for_teachers(teachers, backbone="test_vit", img_size=32)
    cfg = load_config("demo-quick", ["stage1.epochs=1", "stage2.epochs=1", "stage1.batch_size=4",
                                     "stage2.batch_size=8", "precision=fp32", "device=cpu", "checkpoint_every=0"])
    # un-augmented readers: the trainer applies cfg.augment (the paper's PairedAugment defaults)
    s1 = ShardStream(out, "image", shuffle_buffer=4)
    s2 = ShardPairDataset(out)
    Trainer(model, teachers, cfg, tmp_path, device=torch.device("cpu")).fit(s1, s2)
    rows = read_losses(tmp_path / "losses.csv")
    assert sum(r["stage"] == 1 for r in rows) == math.ceil(s1.micro_batches_per_rank(1, 4) / 1)
    assert sum(r["stage"] == 2 for r in rows) == math.ceil(len(s2) / 8)
    assert all(math.isfinite(r["loss"]) for r in rows)


def test_write_errors_name_the_file_and_read_errors_stay_read_errors(pack, tmp_path, monkeypatch):
    from leader import faults
    from leader.errors import WriteError

    m, _ = pack
    faults.reset()
    monkeypatch.setenv(faults.ENV, "shard.after_tar:2:enospc")
    with pytest.raises(WriteError, match=r"shard-000001\.tar: the disk is full.*every complete shard"):
        write_shards(m, tmp_path / "a", image_size=16, shard_size=5, progress=False)
    monkeypatch.delenv(faults.ENV)
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if not p.name.startswith(".")) == [
        "plan.json", "shard-000000.json", "shard-000000.tar"]  # the failed shard left nothing behind
    assert write_shards(m, tmp_path / "a", image_size=16, shard_size=5, progress=False)["n_images"] == 12

    def missing(path):
        raise FileNotFoundError(2, "No such file or directory", path)

    with pytest.raises(FileNotFoundError):  # an unreadable input is not reported as a write error
        write_shards(m, tmp_path / "b", image_size=16, shard_size=5, progress=False, loader=missing)
    assert not list((tmp_path / "b").glob("*.tar"))
