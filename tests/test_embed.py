"""leader embed: batched, resumable, widths checked."""

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from leader.embed import embed_dataset
from leader.store import EmbeddingStore


class _Imgs(Dataset):
    def __init__(self, n=10):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 1, 8, 8, generator=g)
        self.reads = 0

    def __len__(self):
        return len(self.x)

    def item_id(self, i):
        return f"id{i}"

    def __getitem__(self, i):
        self.reads += 1
        return {"image": self.x[i], "id": f"id{i}"}


def _fn(x, ids):
    flat = x.flatten(1)
    return {"a": flat[:, :3] * 2, "b": flat[:, :5].sum(1, keepdim=True).repeat(1, 2)}


def test_embeds_every_item_in_order(tmp_path):
    ds = _Imgs()
    store = embed_dataset(_fn, ds, tmp_path / "s", {"a": 3, "b": 2}, batch_size=4, flush_every=4,
                          device="cpu", precision="fp32")
    ids, a = store.load("a")
    assert ids == [f"id{i}" for i in range(10)]
    np.testing.assert_allclose(a, ds.x.flatten(1)[:, :3].numpy() * 2, rtol=1e-6)


def test_resume_skips_done_ids_without_decoding_them(tmp_path):
    ds = _Imgs()
    calls = {"n": 0}

    def crashing(x, ids):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return _fn(x, ids)

    with pytest.raises(RuntimeError):
        embed_dataset(crashing, ds, tmp_path / "s", {"a": 3, "b": 2}, batch_size=2, flush_every=2,
                      device="cpu", precision="fp32")
    done = len(EmbeddingStore.open(tmp_path / "s"))
    assert done == 4  # two flushed batches survived the crash
    ds.reads = 0
    store = embed_dataset(_fn, ds, tmp_path / "s", {"a": 3, "b": 2}, batch_size=2, device="cpu", precision="fp32")
    assert ds.reads == 6  # only the missing items were decoded
    assert len(store) == 10
    _, b = store.load("b")
    assert b.shape == (10, 2)


def test_wrong_width_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        embed_dataset(_fn, _Imgs(), tmp_path / "s", {"a": 4, "b": 2}, device="cpu", precision="fp32")
