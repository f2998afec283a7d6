"""Kill anywhere, rerun completes; a full / read-only disk loses nothing (issue 7) for the
non-training jobs: ``leader embed``, ``leader data index`` and ``leader data shard``.

Every job runs through the real ``leader`` entry point (``leader.cli.main``) in its own
process. The reference runs are plain ``python -m leader.cli ...`` subprocesses; the faulty
runs are forked from a *zygote* process that has imported torch/timm once (a fresh
interpreter costs ~5 s of imports per run on 2 cores, a fork ~0.1 s), so that each job can be
killed many times within the time budget. Each fork is a separate process with its own memory
and fault counters; the zygote result is checked bit for bit against the fresh-process run.

Faults: ``LEADER_FAULT=name:n:kill`` (SIGKILL at a named point, :mod:`leader.faults`),
``enospc`` / ``erofs`` (the write raises as on a full / read-only disk), a real kernel
``EFBIG`` from ``RLIMIT_FSIZE`` (writes past the limit fail), and SIGKILL from the parent
after a seeded random delay. After every interrupted run the output must read back as a
consistent prefix of the reference (no duplicate, missing, partial or changed rows; every
visible file complete); after the last, fault-free run it must equal the reference.
``LEADER_FAULT_KILLS=N`` sets the number of random kills per job (default 3).
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leader.store import EmbeddingStore

N_KILLS = int(os.environ.get("LEADER_FAULT_KILLS", "3"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TQDM_DISABLE": "1", "PYTHONHASHSEED": "0"}
ENV.pop("LEADER_FAULT", None)
STATS: dict[tuple[str, str], list[int]] = {}  # (job, fault) -> [runs, survived, rows lost]

_ZYGOTE = r"""
import json, os, resource, signal, sys, traceback
import torch, timm, pandas, pyarrow.parquet
import leader.cli, leader.cli.data, leader.cli.teachers, leader.recipe, leader.embed, leader.shards, leader.manifest
import leader.patches, leader.models.checkpoint, leader.datasets.pack, leader.config
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    r, w = os.pipe()  # the child's output goes through the zygote (RLIMIT_FSIZE would cut a log file)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(120)  # a hung child dies instead of hanging the test
            for k, v in job["env"].items():
                os.environ[k] = v
            os.close(r)
            os.dup2(w, 1)
            os.dup2(w, 2)
            if job.get("fsize"):
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (job["fsize"], job["fsize"]))
            code = leader.cli.main(job["args"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(w)
    print(json.dumps({"pid": pid}), flush=True)
    with os.fdopen(r, "rb") as src, open(job["log"], "wb") as dst:
        dst.write(src.read())
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Zygote:
    """A process that forks one child per job; the children run ``leader.cli.main``."""

    def __init__(self, logs: Path):
        self.logs, self.n = logs, 0
        self.p = subprocess.Popen([sys.executable, "-u", "-c", _ZYGOTE], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, env=ENV, bufsize=0)

    def wait_ready(self):
        assert self._line(180) == "ready"

    def _line(self, timeout: float) -> str:
        fd, out, end = self.p.stdout.fileno(), b"", time.monotonic() + timeout
        while not out.endswith(b"\n"):
            if not select.select([fd], [], [], max(0.0, end - time.monotonic()))[0]:
                raise TimeoutError("zygote did not answer")
            ch = os.read(fd, 1)
            if not ch:
                raise RuntimeError("zygote exited")
            out += ch
        return out.decode().strip()

    def run(self, args, fault: str | None = None, fsize: int | None = None,
            kill_after: float | None = None) -> tuple[int, str]:
        """Run ``leader ARGS``; SIGKILL it after ``kill_after`` s. Returns (exit code, log)."""
        self.n += 1
        log = self.logs / f"run{self.n:03d}.log"
        env = {"LEADER_FAULT": fault or ""}
        self.p.stdin.write((json.dumps({"args": [str(a) for a in args], "env": env, "log": str(log),
                                        "fsize": fsize}) + "\n").encode())
        self.p.stdin.flush()
        pid = json.loads(self._line(60))["pid"]
        if kill_after is not None:
            fd = self.p.stdout.fileno()
            if not select.select([fd], [], [], kill_after)[0]:  # still running
                os.kill(pid, signal.SIGKILL)
        rc = json.loads(self._line(150))["rc"]
        return rc, log.read_text(errors="replace")

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=30)


def _fresh_cli(args, timeout=300) -> str:
    proc = subprocess.run([sys.executable, "-m", "leader.cli", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def _random_kills(kit, args, seed: int, check) -> None:
    """SIGKILL ``leader ARGS`` after seeded random delays until ``N_KILLS`` runs were killed
    mid-way (runs that finished first do not count); ``check()`` after each."""
    rng = random.Random(seed)
    t0 = time.monotonic()
    rc, log = kit["z"].run(args[:-1] + [f"{args[-1]}-timing"])  # an uninterrupted run sets the scale
    assert rc == 0, log
    span = time.monotonic() - t0
    killed = tries = 0
    while killed < N_KILLS and tries < 4 * N_KILLS:
        tries += 1
        rc, log = kit["z"].run(args, kill_after=rng.uniform(0.05, 1.0) * span)
        check()
        if rc == -signal.SIGKILL:
            killed += 1
            _record(args[0] if args[0] == "embed" else f"data {args[1]}", "SIGKILL at a random time", True)
    assert killed >= min(2, N_KILLS), f"only {killed} of {tries} runs were killed before they finished"


def _record(job: str, fault: str, survived: bool, lost: int = 0) -> None:
    s = STATS.setdefault((job, fault), [0, 0, 0])
    s[0] += 1
    s[1] += int(survived)
    s[2] += lost


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    import torch
    from PIL import Image

    from leader.models import LeaderModel, save_model
    from leader.phantoms import make_phantom_pack

    root = tmp_path_factory.mktemp("faults")
    make_phantom_pack(root / "ph", n_images=24, size=64, seed=3)
    torch.manual_seed(0)
    save_model(LeaderModel("resnet18", head_dims={"disease": 4, "anatomy": 3}, img_size=32), root / "ck")
    (root / "png").mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray((rng.random((40, 48)) * 255).astype(np.uint8)).save(root / "png" / f"img{i:02d}.png")
    (root / "logs").mkdir()
    kit = {"root": root, "manifest": root / "ph" / "manifest.parquet", "ckpt": root / "ck", "png": root / "png"}
    z = Zygote(root / "logs")  # its imports overlap with the reference run below
    kit["z"] = z
    # the embedding reference: an uninterrupted run in a fresh interpreter (python -m leader.cli);
    # the zygote's runs are compared with it bit for bit
    _fresh_cli(_embed_args(kit, root / "ref-emb"))
    ref = EmbeddingStore.open(root / "ref-emb")
    kit["ref_ids"] = ref.ids
    kit["ref_vecs"] = {k: ref.load(k)[1] for k in ref.dims}
    assert len(kit["ref_ids"]) == 24
    z.wait_ready()
    for args in (_shard_args(kit, root / "ref-shards"), _index_args(kit, root / "ref-index.parquet")):
        rc, log = z.run(args)
        assert rc == 0, log
    yield kit
    z.close()
    if STATS:
        print("\n| job | fault | runs | survived | rows lost |\n|---|---|---|---|---|")
        for (job, fault), (runs, ok, lost) in sorted(STATS.items()):
            print(f"| {job} | {fault} | {runs} | {ok} | {lost} |")


# every command line ends with "--out OUT"
def _embed_args(kit, out, flush=2):
    return ["embed", "--checkpoint", kit["ckpt"], "--manifest", kit["manifest"], "--batch-size", 2,
            "--flush-every", flush, "--precision", "fp32", "--device", "cpu", "--out", out]


def _shard_args(kit, out):
    return ["data", "shard", "--manifest", kit["manifest"], "--split", "all", "--image-size", 32,
            "--shard-size", 4, "--out", out]


def _index_args(kit, out):
    return ["data", "index", "--root", kit["png"], "--out", out]


# ------------------------------------------------------------------------------------ checks
def _visible_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def _store_prefix(kit, out: Path) -> int:
    """The store at ``out`` is a prefix of the reference, bit for bit; returns its row count."""
    from safetensors.numpy import load_file

    if not (out / "meta.json").is_file():
        return 0
    for name in _visible_files(out):  # every visible file is complete (written atomically)
        if name.endswith(".safetensors"):
            load_file(str(out / name))
        elif name.endswith(".parquet"):
            pd.read_parquet(out / name)
        elif name.endswith(".json"):
            json.loads((out / name).read_text())
    s = EmbeddingStore.open(out)
    ids = s.ids
    assert len(set(ids)) == len(ids), "duplicate rows"
    assert ids == kit["ref_ids"][: len(ids)], "rows missing or out of order"
    for k, ref in kit["ref_vecs"].items():
        got = s.load(k)[1]
        assert got.tobytes() == ref[: len(ids)].tobytes(), f"key {k!r} differs from the uninterrupted run"
    return len(ids)


def _store_equal(kit, out: Path) -> None:
    assert _store_prefix(kit, out) == len(kit["ref_ids"])
    assert not (out.parent / f"{out.name}.parts").exists()


def _shards_consistent(kit, out: Path, complete: bool = False) -> None:
    """Every visible file equals the reference's file of the same name, byte for byte."""
    ref = _visible_files(kit["root"] / "ref-shards")
    got = _visible_files(out)
    for name, data in got.items():
        assert name in ref, f"unexpected file {name}"
        if name.endswith(".parquet"):  # compare the tables, not the writer's bytes
            pd.testing.assert_frame_equal(pd.read_parquet(out / name), pd.read_parquet(kit["root"] / "ref-shards" / name))
        else:
            assert data == ref[name], f"{name} differs from the uninterrupted run"
        if name.startswith("shard-") and name.endswith(".json"):
            assert name[:-5] + ".tar" in got, f"{name} without its tar"
    if complete:
        assert set(got) == set(ref)
        from leader.shards import ShardImageDataset

        ds = ShardImageDataset(out)
        assert [ds.item_id(i) for i in range(len(ds))] == list(pd.read_parquet(kit["manifest"])["id"])


def _manifest_rows(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


# ------------------------------------------------------------------------------------ leader embed
def test_embed_zygote_run_equals_fresh_process(kit):
    out = kit["root"] / "emb-zygote"
    rc, log = kit["z"].run(_embed_args(kit, out))
    assert rc == 0, log
    _store_equal(kit, out)


def test_embed_killed_at_each_fault_point_then_completes(kit):
    out = kit["root"] / "emb-kill"
    # 24 images, batch 2, a flush (= a store shard) after every batch: 12 appends
    steps = [("store.after_shard:2:kill", 2),   # shard 1 written, not committed -> orphan
             ("store.after_ids:1:kill", 2),     # orphan cleaned; shard + id table written, not committed
             ("store.after_index:1:kill", 4),   # committed, killed right after
             ("embed.after_batch:2:kill", 6),   # a computed batch not flushed yet
             ("embed.after_flush:2:kill", 10)]  # killed between two flushes
    for fault, rows in steps:
        rc, log = kit["z"].run(_embed_args(kit, out), fault=fault)
        assert rc == -signal.SIGKILL, log
        got = _store_prefix(kit, out)
        assert got == rows, (fault, got)
        _record("embed", f"kill at {fault.split(':')[0]}", True)
    rc, log = kit["z"].run(_embed_args(kit, out))
    assert rc == 0, log
    _store_equal(kit, out)
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".")]  # tmp files cleaned


def test_embed_disk_full_read_only_and_file_size_limit(kit):
    out = kit["root"] / "emb-full"
    rc, log = kit["z"].run(_embed_args(kit, out), fault="embed.after_flush:2:kill")
    assert rc == -signal.SIGKILL and _store_prefix(kit, out) == 4
    cases = [("store.after_shard:1:enospc", None, "the disk is full"),
             ("store.after_ids:2:erofs", None, "the filesystem is read-only"),
             (None, 6000, "file-size limit")]  # real EFBIG: a 4-row shard is ~8.5 KB, a 2-row one ~4.4 KB
    for fault, fsize, reason in cases:
        before = _visible_files(out)
        rows = _store_prefix(kit, out)
        rc, log = kit["z"].run(_embed_args(kit, out, flush=4 if fsize else 2), fault=fault, fsize=fsize)
        assert rc == 2, log  # the CLI's clean error exit: one "leader: error: ..." line
        assert "leader: error: could not write" in log and reason in log and "intact" in log, log[-2000:]
        assert f"({rows} committed rows)" in log or f"({rows + 2} committed rows)" in log, log[-2000:]
        after = _store_prefix(kit, out)
        assert after >= rows
        if after == rows:
            assert _visible_files(out) == before  # the previous store, byte for byte, nothing left behind
        _record("embed", f"{reason} during a store write", True)
    rc, log = kit["z"].run(_embed_args(kit, out))  # space again: the rerun completes
    assert rc == 0, log
    _store_equal(kit, out)


def test_embed_random_kills_then_completes(kit):
    out = kit["root"] / "emb-random"
    _random_kills(kit, _embed_args(kit, out), 7, lambda: _store_prefix(kit, out))
    rc, log = kit["z"].run(_embed_args(kit, out))
    assert rc == 0, log
    _store_equal(kit, out)


# ------------------------------------------------------------------------------------ leader data shard
def test_shard_killed_at_each_fault_point_then_completes(kit):
    out = kit["root"] / "sh-kill"
    for fault in ["shard.after_plan:1:kill", "shard.after_tar:2:kill", "shard.after_shard:2:kill",
                  "shard.after_tables:1:kill", "shard.after_index:1:kill"]:
        rc, log = kit["z"].run(_shard_args(kit, out), fault=fault)
        assert rc == -signal.SIGKILL, log
        _shards_consistent(kit, out)
        _record("data shard", f"kill at {fault.split(':')[0]}", True)
    assert (out / "index.json").is_file()  # the last kill came after the index
    rc, log = kit["z"].run(_shard_args(kit, out))
    assert rc == 0, log
    _shards_consistent(kit, out, complete=True)


def test_shard_disk_full_read_only_and_file_size_limit(kit):
    out = kit["root"] / "sh-full"
    rc, log = kit["z"].run(_shard_args(kit, out), fault="shard.after_shard:2:kill")
    assert rc == -signal.SIGKILL
    cases = [("shard.after_tar:1:enospc", None, "the disk is full", "shard-000002.tar"),
             ("shard.after_tar:1:erofs", None, "the filesystem is read-only", "shard-000002.tar"),
             (None, 4096, "file-size limit", "shard-000002.tar")]
    for fault, fsize, reason, target in cases:
        before = _visible_files(out)
        rc, log = kit["z"].run(_shard_args(kit, out), fault=fault, fsize=fsize)
        assert rc == 2, log
        assert "leader: error: could not write" in log and reason in log and target in log and "complete shard" in log, log[-2000:]
        assert _visible_files(out) == before  # the complete shards, byte for byte
        _shards_consistent(kit, out)
        _record("data shard", f"{reason} during a shard write", True)
    rc, log = kit["z"].run(_shard_args(kit, out), fault="shard.after_tables:1:enospc")  # during the index write
    assert rc == 2 and "index.json" in log and "each of the 6 complete shards" in log, log[-2000:]
    assert not (out / "index.json").exists()
    _shards_consistent(kit, out)
    _record("data shard", "the disk is full during the index write", True)
    rc, log = kit["z"].run(_shard_args(kit, out))
    assert rc == 0, log
    _shards_consistent(kit, out, complete=True)


def test_shard_random_kills_then_completes(kit):
    out = kit["root"] / "sh-random"
    _random_kills(kit, _shard_args(kit, out), 11, lambda: _shards_consistent(kit, out))
    rc, log = kit["z"].run(_shard_args(kit, out))
    assert rc == 0, log
    _shards_consistent(kit, out, complete=True)


# ------------------------------------------------------------------------------------ leader data index
def test_index_faults_then_completes(kit):
    ref = _manifest_rows(kit["root"] / "ref-index.parquet")
    out = kit["root"] / "idx" / "manifest.parquet"
    out.parent.mkdir()
    for fault in ["index.before_write:1:kill", "index.after_write:1:kill"]:
        rc, log = kit["z"].run(_index_args(kit, out), fault=fault)
        assert rc == -signal.SIGKILL, log
        if out.exists():
            pd.testing.assert_frame_equal(_manifest_rows(out), ref)
        visible = {p.name for p in out.parent.iterdir() if not p.name.startswith(".")}
        assert visible <= {out.name, "manifest.skipped.json"}, visible  # no partial file under a real name
        if fault.startswith("index.after_write"):  # a new manifest never sits beside an old report
            assert "manifest.skipped.json" not in visible, visible
        _record("data index", f"kill at {fault.split(':')[0]}", True)
    assert out.exists()
    good = out.read_bytes()
    for fault, fsize, reason in [("index.before_write:1:enospc", None, "the disk is full"),
                                 ("index.before_write:1:erofs", None, "the filesystem is read-only"),
                                 (None, 1024, "file-size limit")]:
        rc, log = kit["z"].run(_index_args(kit, out), fault=fault, fsize=fsize)
        assert rc == 2, log
        assert "leader: error: could not write" in log and reason in log and str(out) in log and "previous manifest" in log, log[-2000:]
        assert out.read_bytes() == good  # the previous manifest is intact
        _record("data index", f"{reason} during the manifest write", True)
    # old or new manifest: either is complete and equal to the reference
    _random_kills(kit, _index_args(kit, out), 5, lambda: pd.testing.assert_frame_equal(_manifest_rows(out), ref))
    rc, log = kit["z"].run(_index_args(kit, out))
    assert rc == 0, log
    pd.testing.assert_frame_equal(_manifest_rows(out), ref)
