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


def test_missing_items_are_found_chunk_by_chunk_and_split_over_ranks(tmp_path):
    from leader.embed import _MissingSampler

    ds = _Imgs(23)
    store = EmbeddingStore.create(tmp_path / "s", {"a": 3, "b": 2})
    have = [1, 2, 5, 11, 12, 20]
    store.append([f"id{i}" for i in have], {"a": np.zeros((6, 3)), "b": np.zeros((6, 2))})
    missing = [i for i in range(23) if i not in have]
    skipped = []
    for world in (1, 2, 3):
        for rank in range(world):
            got = list(_MissingSampler(ds, store, rank, world, chunk=4, on_skip=skipped.append))
            assert got == missing[rank::world]  # the k-th missing item goes to rank k % world
    assert sum(skipped) == 6 * 6 and ds.reads == 0  # ids came from item_id, no pixel decoded


def test_merge_stores_links_parts_and_survives_an_interrupted_removal(tmp_path):
    from leader.embed import merge_stores

    main = EmbeddingStore.create(tmp_path / "s", {"a": 2})
    main.append(["x0"], {"a": np.ones((1, 2))})
    parts = tmp_path / "s.parts"
    for r, ids in enumerate((["x1", "x2"], ["x3"])):
        p = EmbeddingStore.create(parts / f"rank-{r:05d}", {"a": 2})
        p.append(ids, {"a": np.full((len(ids), 2), r + 2.0)})
    ino = (parts / "rank-00000" / "shards" / "shard-00000.safetensors").stat().st_ino
    half = parts / "rank-00009"  # a removal killed after meta.json was deleted: not a store any more
    (half / "shards").mkdir(parents=True)
    assert merge_stores(main, sorted(parts.iterdir())) == 3
    assert not (parts / "rank-00000").exists() and not (parts / "rank-00001").exists()
    store = EmbeddingStore.open(tmp_path / "s")
    assert store.ids == ["x0", "x1", "x2", "x3"]
    np.testing.assert_array_equal(store.get(["x2", "x3"], "a"), [[2, 2], [3, 3]])
    assert (tmp_path / "s" / "shards" / "shard-00001.safetensors").stat().st_ino == ino  # moved, not copied


def test_full_disk_during_embedding_keeps_what_was_committed(tmp_path, monkeypatch):
    from leader import faults
    from leader.errors import WriteError

    ref = embed_dataset(_fn, _Imgs(), tmp_path / "ref", {"a": 3, "b": 2}, batch_size=2, flush_every=2,
                        device="cpu", precision="fp32")
    faults.reset()
    monkeypatch.setenv(faults.ENV, "store.after_ids:3:enospc")
    with pytest.raises(WriteError, match="disk is full.*4 committed rows"):
        embed_dataset(_fn, _Imgs(), tmp_path / "s", {"a": 3, "b": 2}, batch_size=2, flush_every=2,
                      device="cpu", precision="fp32")
    monkeypatch.delenv(faults.ENV)
    assert EmbeddingStore.open(tmp_path / "s").ids == ref.ids[:4]
    store = embed_dataset(_fn, _Imgs(), tmp_path / "s", {"a": 3, "b": 2}, batch_size=2, flush_every=2,
                          device="cpu", precision="fp32")
    assert store.ids == ref.ids
    for k in ("a", "b"):
        assert store.load(k)[1].tobytes() == ref.load(k)[1].tobytes()


def test_crash_between_merge_and_part_removal_repeats_nothing(tmp_path, monkeypatch):
    from leader import faults
    from leader.embed import merge_stores

    main = EmbeddingStore.create(tmp_path / "s", {"a": 2})
    part = EmbeddingStore.create(tmp_path / "s.parts" / "rank-00000", {"a": 2})
    part.append(["p0", "p1"], {"a": np.ones((2, 2))})
    faults.reset()
    monkeypatch.setenv(faults.ENV, "embed.after_merge:1:raise")
    with pytest.raises(faults.InjectedFault):
        merge_stores(main, [tmp_path / "s.parts" / "rank-00000"])
    monkeypatch.delenv(faults.ENV)
    assert (tmp_path / "s.parts" / "rank-00000" / "meta.json").exists()  # not removed yet
    assert merge_stores(EmbeddingStore.create(tmp_path / "s", {"a": 2}), [tmp_path / "s.parts" / "rank-00000"]) == 0
    assert EmbeddingStore.open(tmp_path / "s").ids == ["p0", "p1"]
    assert not (tmp_path / "s.parts" / "rank-00000").exists()


def _png_folder(tmp_path, n=6, broken=(2,)):
    from PIL import Image

    from leader.manifest import make_manifest

    rows = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        arr = (np.arange(32 * 32).reshape(32, 32) * (i + 1) % 251).astype(np.uint8)
        Image.fromarray(arr).save(p)
        if i in broken:  # truncated: no IEND
            p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
        rows.append({"id": f"img{i}", "path": str(p), "dataset": "folder"})
    return make_manifest(rows)


def test_unreadable_images_fail_fast_or_are_skipped_and_listed(tmp_path):
    import json

    from leader.errors import ImageReadError
    from leader.patches import ImageDataset

    m = _png_folder(tmp_path)
    ds = ImageDataset(m, 16, cache=False)
    fn = lambda x, ids: {"a": x.flatten(1)[:, :3]}  # noqa: E731
    with pytest.raises(ImageReadError, match="img2.png"):
        embed_dataset(fn, ds, tmp_path / "strict", {"a": 3}, batch_size=2, device="cpu", precision="fp32")
    store = embed_dataset(fn, ds, tmp_path / "lenient", {"a": 3}, batch_size=2, device="cpu", precision="fp32",
                          on_error="skip")
    assert sorted(store.ids) == ["img0", "img1", "img3", "img4", "img5"]
    rep = json.loads((tmp_path / "lenient" / "skipped.json").read_text())
    assert rep["count"] == 1 and rep["items"][0]["id"] == "img2"
    assert "img2.png" in rep["items"][0]["reason"] and rep["counts_by_reason"] == {"ImageReadError": 1}
    # a rerun retries only the skipped item and lists it again; nothing is embedded twice
    store = embed_dataset(fn, ds, tmp_path / "lenient", {"a": 3}, batch_size=2, device="cpu", precision="fp32",
                          on_error="skip")
    assert len(store) == 5 and json.loads((tmp_path / "lenient" / "skipped.json").read_text())["count"] == 1
    # the file is repaired: a rerun (default policy) embeds it and the report says so
    m.df.loc[m.df["id"] == "img2", "path"] = m.df.loc[m.df["id"] == "img1", "path"].values
    store = embed_dataset(fn, ImageDataset(m, 16, cache=False), tmp_path / "lenient", {"a": 3}, batch_size=2,
                          device="cpu", precision="fp32")
    assert len(store) == 6
    rep = json.loads((tmp_path / "lenient" / "skipped.json").read_text())
    assert rep["policy"] == "raise" and rep["count"] == 0 and rep["items"] == []
