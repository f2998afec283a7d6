"""Tests for leader.store.EmbeddingStore and import_npz."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch

from leader.store import EmbeddingStore, import_npz


def rand(n, d, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_roundtrip_layout_and_reopen(tmp_path):
    path = tmp_path / "store"
    store = EmbeddingStore.create(path, {"e_da": 8, "disease": 4}, meta={"model": "tiny"})
    ids = [f"nih/{i:03d}" for i in range(5)]
    a, b = rand(5, 8), rand(5, 4, seed=1)
    assert store.append(ids, {"e_da": a, "disease": b}) == 5
    assert len(store) == 5 and store.ids == ids and store.dims == {"e_da": 8, "disease": 4}
    np.testing.assert_array_equal(store.get(["nih/003", "nih/001", "nih/003"], "e_da"), a[[3, 1, 3]])
    got_ids, values = store.load("disease")
    assert got_ids == ids and values.dtype == np.float32
    np.testing.assert_array_equal(values, b)
    contains = store.contains(["nih/000", "nope"])
    assert contains.dtype == np.bool_ and contains.tolist() == [True, False]

    meta = json.loads((path / "meta.json").read_text())
    assert meta["keys"] == {"e_da": 8, "disease": 4} and meta["dtype"] == "float32"
    assert meta["meta"] == {"model": "tiny"}
    assert meta["version"] == 2
    index = pd.read_parquet(path / "index.parquet")  # the commit list: one row per shard
    assert list(index.columns) == ["shard", "n"] and index.values.tolist() == [[0, 5]]
    assert (path / "shards" / "shard-00000.safetensors").is_file()
    assert (path / "shards" / "shard-00000.ids.safetensors").is_file()
    assert not [p for p in path.rglob("*.tmp")]

    again = EmbeddingStore.open(path)
    assert again.ids == ids and again.meta == {"model": "tiny"}
    np.testing.assert_array_equal(again.get(ids, "e_da"), a)
    reopened = EmbeddingStore.create(path, {"e_da": 8, "disease": 4})
    assert len(reopened) == 5


def test_create_conflicts(tmp_path):
    path = tmp_path / "s"
    EmbeddingStore.create(path, {"embedding": 8}, meta={"model": "a"})
    with pytest.raises(ValueError, match="16"):
        EmbeddingStore.create(path, {"embedding": 16})
    with pytest.raises(ValueError, match="float16"):
        EmbeddingStore.create(path, {"embedding": 8}, dtype="float16")
    with pytest.raises(ValueError, match="model"):
        EmbeddingStore.create(path, {"embedding": 8}, meta={"model": "b"})
    with pytest.raises(FileExistsError):
        EmbeddingStore.create(path, {"embedding": 8}, exist_ok=False)
    with pytest.raises(ValueError):
        EmbeddingStore.create(tmp_path / "t", {"embedding": 0})
    with pytest.raises(FileNotFoundError):
        EmbeddingStore.open(tmp_path / "missing")
    with pytest.raises(TypeError):
        EmbeddingStore(path, {"embedding": 8}, "float32", {})


def test_append_validation(tmp_path):
    store = EmbeddingStore.create(tmp_path / "s", {"embedding": 4})
    store.append(["a", "b"], {"embedding": rand(2, 4)})
    with pytest.raises(ValueError, match="'a'"):
        store.append(["a", "c"], {"embedding": rand(2, 4)})
    with pytest.raises(ValueError, match="duplicate"):
        store.append(["c", "c"], {"embedding": rand(2, 4)})
    with pytest.raises(ValueError, match=r"'embedding'.*\(2, 4\).*\(2, 3\)"):
        store.append(["c", "d"], {"embedding": rand(2, 3)})
    with pytest.raises(ValueError, match="missing"):
        store.append(["c"], {"other": rand(1, 4)})
    bad = rand(2, 4)
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="'d'"):
        store.append(["c", "d"], {"embedding": bad})
    with pytest.raises(TypeError):
        store.append([1], {"embedding": rand(1, 4)})
    # skip_existing makes re-runs idempotent; torch tensors are accepted
    n = store.append(["a", "c"], {"embedding": torch.ones(2, 4)}, skip_existing=True)
    assert n == 1 and store.ids == ["a", "b", "c"]
    np.testing.assert_array_equal(store.get(["c"], "embedding"), np.ones((1, 4), np.float32))
    assert store.append(["a"], {"embedding": rand(1, 4)}, skip_existing=True) == 0
    assert len(EmbeddingStore.open(tmp_path / "s")) == 3


def test_get_missing_ids_keyerror(tmp_path):
    store = EmbeddingStore.create(tmp_path / "s", {"embedding": 2})
    store.append(["x"], {"embedding": rand(1, 2)})
    missing = [f"m{i}" for i in range(7)]
    with pytest.raises(KeyError) as err:
        store.get(["x"] + missing, "embedding")
    msg = str(err.value)
    assert "7 of 8" in msg and "'m0'" in msg and "'m4'" in msg and "'m5'" not in msg
    with pytest.raises(KeyError, match="nokey"):
        store.get(["x"], "nokey")


def test_multiple_shards_insertion_order_and_float16(tmp_path):
    store = EmbeddingStore.create(tmp_path / "s", {"embedding": 3}, dtype="float16")
    chunks = [rand(4, 3, seed=s) for s in range(3)]
    all_ids = []
    for s, chunk in enumerate(chunks):
        ids = [f"id{s}-{i}" for i in range(4)]
        all_ids += ids
        store.append(ids, {"embedding": chunk})
    assert sorted(p.name for p in (tmp_path / "s" / "shards").iterdir()) == [
        "shard-00000.ids.safetensors",
        "shard-00000.safetensors",
        "shard-00001.ids.safetensors",
        "shard-00001.safetensors",
        "shard-00002.ids.safetensors",
        "shard-00002.safetensors",
    ]
    ids, values = EmbeddingStore.open(tmp_path / "s").load("embedding")
    assert ids == all_ids and values.dtype == np.float32
    np.testing.assert_allclose(values, np.concatenate(chunks), atol=2e-3)
    mixed = store.get(["id2-3", "id0-0", "id1-2"], "embedding")
    np.testing.assert_allclose(mixed, np.stack([chunks[2][3], chunks[0][0], chunks[1][2]]), atol=2e-3)
    with pytest.raises(ValueError, match="float16"):
        store.append(["big"], {"embedding": np.full((1, 3), 1e6, np.float32)})


def test_empty_store(tmp_path):
    store = EmbeddingStore.create(tmp_path / "s", {"embedding": 5})
    ids, values = EmbeddingStore.open(tmp_path / "s").load("embedding")
    assert ids == [] and values.shape == (0, 5) and len(store) == 0


def test_crash_between_shard_and_index_leaves_ignored_orphan(tmp_path, monkeypatch):
    path = tmp_path / "s"
    store = EmbeddingStore.create(path, {"embedding": 4})
    first = rand(3, 4)
    store.append(["a", "b", "c"], {"embedding": first})

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash before the index write")

    monkeypatch.setattr(EmbeddingStore, "_write_commits", crash)
    with pytest.raises(RuntimeError):
        store.append(["d", "e"], {"embedding": rand(2, 4, seed=5)})
    monkeypatch.undo()
    orphan = path / "shards" / "shard-00001.safetensors"
    assert orphan.is_file()  # the shard made it to disk, the index did not

    reopened = EmbeddingStore.open(path)
    assert reopened.ids == ["a", "b", "c"] and not reopened.contains(["d"]).any()
    np.testing.assert_array_equal(reopened.load("embedding")[1], first)

    # the next append reuses (overwrites) the orphan's number; a garbage orphan is fine too
    orphan.write_bytes(b"garbage from a torn write")
    second = rand(2, 4, seed=9)
    assert reopened.append(["d", "e"], {"embedding": second}) == 2
    final = EmbeddingStore.open(path)
    assert final.ids == ["a", "b", "c", "d", "e"]
    np.testing.assert_array_equal(final.get(["d", "e"], "embedding"), second)
    assert sorted(p.name for p in (path / "shards").iterdir()) == [
        "shard-00000.ids.safetensors", "shard-00000.safetensors", "shard-00001.ids.safetensors", "shard-00001.safetensors"]


def test_import_npz_both_layouts(tmp_path):
    vecs = rand(3, 6)
    ids = np.array(["p/1", "p/2", "p/3"])
    np.savez(tmp_path / "arrays.npz", ids=ids, embedding=vecs)
    assert import_npz(tmp_path / "s1", tmp_path / "arrays.npz") == 3
    assert import_npz(tmp_path / "s1", tmp_path / "arrays.npz") == 0  # re-run skips
    got_ids, got = EmbeddingStore.open(tmp_path / "s1").load("embedding")
    assert got_ids == ids.tolist()
    np.testing.assert_array_equal(got, vecs)

    np.savez(tmp_path / "keyed.npz", **{"x/a": vecs[0], "x/b": vecs[1][None, :]})
    assert import_npz(tmp_path / "s2", tmp_path / "keyed.npz", key="cxrfm") == 2
    store = EmbeddingStore.open(tmp_path / "s2")
    assert store.dims == {"cxrfm": 6}
    np.testing.assert_array_equal(store.get(["x/b"], "cxrfm"), vecs[1:2])

    np.savez(tmp_path / "ragged.npz", a=np.zeros(3), b=np.zeros(4))
    with pytest.raises(ValueError, match="width"):
        import_npz(tmp_path / "s3", tmp_path / "ragged.npz")
    np.savez(tmp_path / "obj.npz", ids=np.array(["a", 1], dtype=object), embedding=np.zeros((2, 2)))
    with pytest.raises(ValueError):
        import_npz(tmp_path / "s4", tmp_path / "obj.npz")


# ------------------------------------------------------------------ format 2: O(batch) appends, exact lookup
def _write_format1(path, chunks, orphan=True):
    """A store as the format-1 code wrote it: index.parquet (id, shard, row) + vector shards."""
    from safetensors.numpy import save_file

    (path / "shards").mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps({"format": "leader-embedding-store", "version": 1,
                                                "keys": {"embedding": 3}, "dtype": "float32", "meta": {"m": 1}}))
    rows = []
    for s, (ids, vecs) in enumerate(chunks):
        save_file({"embedding": vecs}, str(path / "shards" / f"shard-{s:05d}.safetensors"))
        rows += [(i, s, r) for r, i in enumerate(ids)]
    if orphan:  # a crash between shard and index write left shard 2 behind
        save_file({"embedding": rand(2, 3, seed=9)}, str(path / "shards" / f"shard-{len(chunks):05d}.safetensors"))
    pd.DataFrame({"id": pd.array([r[0] for r in rows], dtype="string"), "shard": np.array([r[1] for r in rows], np.int32),
                  "row": np.array([r[2] for r in rows], np.int64)}).to_parquet(path / "index.parquet", index=False)


def test_format1_store_opens_and_is_migrated_by_the_first_writer(tmp_path):
    path = tmp_path / "old"
    chunks = [([f"a{i}" for i in range(4)], rand(4, 3, seed=1)), ([f"b{i}" for i in range(3)], rand(3, 3, seed=2))]
    _write_format1(path, chunks)
    all_ids = chunks[0][0] + chunks[1][0]
    want = np.concatenate([chunks[0][1], chunks[1][1]])
    old = EmbeddingStore.open(path)  # a reader: nothing is written
    assert old.ids == all_ids and len(old) == 7 and "b2" in old and "zz" not in old
    np.testing.assert_array_equal(old.get(["b1", "a0"], "embedding"), want[[5, 0]])
    assert "id" in pd.read_parquet(path / "index.parquet").columns
    assert not list((path / "shards").glob("*.ids.safetensors"))

    w = EmbeddingStore.create(path, {"embedding": 3})  # a writer migrates (vectors untouched)
    assert list(pd.read_parquet(path / "index.parquet").columns) == ["shard", "n"]
    assert json.loads((path / "meta.json").read_text())["version"] == 2
    assert not (path / "shards" / "shard-00002.safetensors").exists()  # the orphan is gone
    w.append(["c0"], {"embedding": rand(1, 3, seed=3)})
    new = EmbeddingStore.open(path)
    assert new.ids == all_ids + ["c0"] and new.meta == {"m": 1}
    np.testing.assert_array_equal(new.load("embedding")[1][:7], want)
    # appending to a format-1 handle opened for reading migrates too
    _write_format1(tmp_path / "old2", chunks, orphan=False)
    r = EmbeddingStore.open(tmp_path / "old2")
    r.append(["c0"], {"embedding": rand(1, 3)})
    assert EmbeddingStore.open(tmp_path / "old2").ids == all_ids + ["c0"]


def test_lookup_is_exact_under_hash_collisions(tmp_path, monkeypatch):
    import leader.store as st

    monkeypatch.setattr(st, "_hash", lambda enc: np.array([len(e) % 2 for e in enc], dtype=np.uint64))
    store = EmbeddingStore.create(tmp_path / "s", {"embedding": 2})
    ids = [f"id{i}" for i in range(40)]  # all collide in two buckets
    vecs = rand(40, 2)
    for s in range(0, 40, 8):
        store.append(ids[s:s + 8], {"embedding": vecs[s:s + 8]})
    again = EmbeddingStore.open(tmp_path / "s")
    for st_ in (store, again):
        assert st_.contains(ids + ["id40", "x", "id1 "]).tolist() == [True] * 40 + [False] * 3
        np.testing.assert_array_equal(st_.get(ids[::-1], "embedding"), vecs[::-1])
    with pytest.raises(ValueError, match="'id7'"):
        store.append(["id7"], {"embedding": rand(1, 2)})


def test_append_writes_only_its_own_rows_and_lookup_is_compact(tmp_path):
    path = tmp_path / "s"
    store = EmbeddingStore.create(path, {"embedding": 4})
    for s in range(6):
        store.append([f"x{s}-{i}" for i in range(50)], {"embedding": rand(50, 4, seed=s)})
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (path / "shards").iterdir()}
    store.append([f"y{i}" for i in range(50)], {"embedding": rand(50, 4, seed=99)})
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (path / "shards").iterdir()}
    assert {k: v for k, v in after.items() if k in before} == before  # old shards and id tables untouched
    assert sorted(set(after) - set(before)) == ["shard-00006.ids.safetensors", "shard-00006.safetensors"]
    assert store._index().nbytes == 16 * len(store)  # 8-byte hash + 8-byte row per id
    assert len(store._index().runs) <= 3


def test_merge_from_links_whole_shards_and_copies_overlaps(tmp_path):
    a = EmbeddingStore.create(tmp_path / "a", {"embedding": 3})
    a.append(["p", "q"], {"embedding": rand(2, 3, seed=1)})
    b = EmbeddingStore.create(tmp_path / "b", {"embedding": 3})
    b.append(["r", "s", "t"], {"embedding": rand(3, 3, seed=2)})
    b.append(["q", "u"], {"embedding": rand(2, 3, seed=3)})  # q is in a already
    assert a.merge_from(b) == 4
    merged = EmbeddingStore.open(tmp_path / "a")
    assert merged.ids == ["p", "q", "r", "s", "t", "u"]
    np.testing.assert_array_equal(merged.get(["q"], "embedding"), rand(2, 3, seed=1)[1:2])
    np.testing.assert_array_equal(merged.get(["r", "s", "t", "u"], "embedding"),
                                  np.concatenate([rand(3, 3, seed=2), rand(2, 3, seed=3)[1:]]))
    linked = (tmp_path / "a" / "shards" / "shard-00001.safetensors").stat()
    assert linked.st_ino == (tmp_path / "b" / "shards" / "shard-00000.safetensors").stat().st_ino  # no copy
    assert a.merge_from(b) == 0  # idempotent
    with pytest.raises(ValueError, match="dims"):
        a.merge_from(EmbeddingStore.create(tmp_path / "c", {"embedding": 4}))


@pytest.mark.parametrize("point", ["store.after_shard", "store.after_ids", "store.after_index"])
@pytest.mark.parametrize("action", ["enospc", "erofs"])
def test_full_or_read_only_disk_leaves_the_store_intact(tmp_path, monkeypatch, point, action):
    from leader import faults
    from leader.errors import WriteError

    path = tmp_path / "s"
    store = EmbeddingStore.create(path, {"embedding": 4})
    first = rand(3, 4)
    store.append(["a", "b", "c"], {"embedding": first})
    files = sorted(p.name for p in (path / "shards").iterdir())
    faults.reset()
    monkeypatch.setenv(faults.ENV, f"{point}:1:{action}")
    with pytest.raises(OSError) as err:
        store.append(["d", "e"], {"embedding": rand(2, 4, seed=5)})
    monkeypatch.delenv(faults.ENV)
    if point == "store.after_index":  # the error came after the commit: the rows are there
        assert len(EmbeddingStore.open(path)) == 5 and len(store) == 5
        return
    assert isinstance(err.value, WriteError)
    msg = str(err.value)
    assert ("disk is full" if action == "enospc" else "read-only") in msg and "shard-00001" in msg
    assert "3 committed rows" in msg and "intact" in msg
    assert sorted(p.name for p in (path / "shards").iterdir()) == files  # partial shard removed
    for s in (store, EmbeddingStore.open(path)):
        assert s.ids == ["a", "b", "c"]
        np.testing.assert_array_equal(s.load("embedding")[1], first)
    assert store.append(["d", "e"], {"embedding": rand(2, 4, seed=5)}) == 2  # space again: it completes
    assert EmbeddingStore.open(path).ids == ["a", "b", "c", "d", "e"]


def test_hash_index_runs_stay_sorted_and_find_every_match():
    from leader.store import _HashIndex

    rng = np.random.default_rng(0)
    idx, chunks, n = _HashIndex(), [], 0
    for _ in range(50):
        h = rng.integers(0, 50, int(rng.integers(1, 300))).astype(np.uint64)  # many equal hashes
        idx.add(h, np.arange(n, n + len(h)))
        chunks.append(h)
        n += len(h)
    every = np.concatenate(chunks)
    sizes = [len(h) for h, _ in idx.runs]
    assert all(a > 2 * b for a, b in zip(sizes, sizes[1:]))  # geometric: O(log N) runs
    for h, p in idx.runs:
        assert (np.diff(h.astype(np.int64)) >= 0).all() and (every[p] == h).all()
    assert sorted(np.concatenate([p for _, p in idx.runs]).tolist()) == list(range(n))
    qi, pos = idx.candidates(np.arange(60, dtype=np.uint64))
    for q in range(60):
        assert sorted(pos[qi == q].tolist()) == np.flatnonzero(every == q).tolist()


def test_crash_during_migration_or_merge_leaves_the_committed_store(tmp_path, monkeypatch):
    from leader import faults

    # a crash (InjectedFault: no cleanup runs, as after SIGKILL) before the migrated commit list
    chunks = [([f"a{i}" for i in range(3)], rand(3, 3, seed=1))]
    _write_format1(tmp_path / "old", chunks, orphan=False)
    faults.reset()
    monkeypatch.setenv(faults.ENV, "store.migrate_before_commit:1:raise")
    with pytest.raises(faults.InjectedFault):
        EmbeddingStore.create(tmp_path / "old", {"embedding": 3})
    assert "id" in pd.read_parquet(tmp_path / "old" / "index.parquet").columns  # still format 1
    assert EmbeddingStore.open(tmp_path / "old").ids == chunks[0][0]
    monkeypatch.setenv(faults.ENV, "store.merge_before_commit:1:raise")
    faults.reset()
    new = EmbeddingStore.create(tmp_path / "old", {"embedding": 3})  # migrates now
    other = EmbeddingStore.create(tmp_path / "other", {"embedding": 3})
    other.append(["b0", "b1"], {"embedding": rand(2, 3, seed=2)})
    with pytest.raises(faults.InjectedFault):  # linked, not committed
        new.merge_from(other)
    monkeypatch.delenv(faults.ENV)
    assert EmbeddingStore.open(tmp_path / "old").ids == chunks[0][0]
    assert (tmp_path / "old" / "shards" / "shard-00001.safetensors").exists()  # the uncommitted link
    again = EmbeddingStore.create(tmp_path / "old", {"embedding": 3})
    assert not (tmp_path / "old" / "shards" / "shard-00001.safetensors").exists()  # cleaned by the writer
    assert again.merge_from(EmbeddingStore.open(tmp_path / "other")) == 2
    assert EmbeddingStore.open(tmp_path / "old").ids == chunks[0][0] + ["b0", "b1"]
