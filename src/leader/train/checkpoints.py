"""Crash-safe training checkpoints: numbered folders, a commit record, verified loading.

Layout of ``RUN/checkpoints/``::

    ckpt-000007/            model.safetensors, config.json, training_state.pt, COMMIT.json
    ckpt-000008/            the newest complete checkpoint
    last -> ckpt-000008     convenience link (updated atomically; not needed for resuming)

A checkpoint is written into a hidden temporary folder; ``COMMIT.json`` (size and SHA-256 of
every file, the training position) is the last file written; then the folder is fsynced and
renamed to ``ckpt-NNNNNN`` in one atomic step. Only after that are older checkpoints
removed (renamed to a hidden ``.trash`` name first, then deleted), keeping ``keep`` of them.
So a process killed at *any* point leaves the previous complete checkpoint in place, and
:meth:`CheckpointDir.latest` only returns folders whose ``COMMIT.json`` matches their files —
a half-written or half-deleted folder is never loaded (``docs/RELIABILITY.md``).

A write that fails (disk full, read-only filesystem, quota) raises
:class:`leader.errors.WriteError` naming the folder, the reason and the previous checkpoint,
which is left intact.

Checkpoints of the earlier layout (a plain ``last/`` or ``last.old/`` folder holding
``model.safetensors`` and ``training_state.pt``) are still found and loaded.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from leader import faults
from leader.errors import as_os_error, write_error
from leader.utils import _fsync_dir, _umask, atomic_write_json, file_sha256, fsync_tree, read_json

log = logging.getLogger(__name__)

__all__ = ["CheckpointDir", "REQUIRED_FILES", "verify_checkpoint"]

REQUIRED_FILES = ("model.safetensors", "config.json", "training_state.pt")
COMMIT = "COMMIT.json"
_NAME = re.compile(r"^ckpt-(\d{6,})$")


def verify_checkpoint(folder: str | os.PathLike, *, hashes: bool = True) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or ``None`` when it is.

    Checks that ``COMMIT.json`` exists and parses, that every file it lists exists with the
    recorded size and (``hashes=True``) SHA-256, and that the required files are among them.
    Legacy folders (no ``COMMIT.json``) pass when the required model and state files exist.
    """
    folder = Path(folder)
    commit = folder / COMMIT
    if not commit.is_file():
        if (folder / "model.safetensors").is_file() and (folder / "training_state.pt").is_file() and \
                folder.name in ("last", "last.old") and not folder.is_symlink():
            return None
        return f"{folder}: no {COMMIT} (an interrupted write)"
    try:
        rec = read_json(commit)
        files = dict(rec["files"])
    except (ValueError, KeyError, TypeError) as exc:
        return f"{folder}: unreadable {COMMIT}: {exc}"
    missing = [f for f in REQUIRED_FILES if f not in files]
    if missing:
        return f"{folder}: {COMMIT} lists no {missing}"
    for name, meta in files.items():
        p = folder / name
        if not p.is_file():
            return f"{folder}: {name} is missing"
        if p.stat().st_size != int(meta["size"]):
            return f"{folder}: {name} has {p.stat().st_size} bytes, {COMMIT} records {meta['size']}"
        if hashes and file_sha256(p) != meta["sha256"]:
            return f"{folder}: {name} does not match its SHA-256 in {COMMIT}"
    return None


class CheckpointDir:
    """The checkpoint folder of one run (see module doc).

    Args:
        path: ``RUN/checkpoints``.
        keep: number of complete checkpoints kept (>= 1; default 2).
    """

    def __init__(self, path: str | os.PathLike, keep: int = 2):
        self.path = Path(path)
        if int(keep) < 1:
            raise ValueError(f"checkpoint keep must be >= 1, got {keep}")
        self.keep = int(keep)

    # ------------------------------------------------------------------ listing
    def numbered(self) -> list[tuple[int, Path]]:
        """``[(seq, folder)]`` of every ``ckpt-NNNNNN`` folder, newest first (complete or not)."""
        if not self.path.is_dir():
            return []
        out = []
        for p in self.path.iterdir():
            m = _NAME.match(p.name)
            if m and p.is_dir() and not p.is_symlink():
                out.append((int(m.group(1)), p))
        return sorted(out, reverse=True)

    def latest(self, *, hashes: bool = True) -> Path | None:
        """The newest complete checkpoint (verified), else a legacy ``last``/``last.old``, else None.

        Incomplete folders are skipped with a warning naming the reason.
        """
        for _, p in self.numbered():
            why = verify_checkpoint(p, hashes=hashes)
            if why is None:
                return p
            log.warning("skipping checkpoint: %s", why)
        for name in ("last", "last.old"):
            p = self.path / name
            if p.is_dir() and not p.is_symlink() and verify_checkpoint(p, hashes=False) is None:
                return p
        return None

    # ------------------------------------------------------------------ writing
    def save(self, write: Callable[[Path], None], position: dict) -> Path:
        """Write one checkpoint: ``write(tmp_folder)`` fills the folder, then it is committed.

        Args:
            write: callable that writes ``REQUIRED_FILES`` into the folder it is given.
            position: training position (stored in ``COMMIT.json``).

        Returns:
            The new ``ckpt-NNNNNN`` folder.

        Raises:
            WriteError: the disk is full / read-only / over quota; the previous checkpoint is
                intact and named in the message.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        nums = self.numbered()
        seq = (nums[0][0] + 1) if nums else 1
        final = self.path / f"ckpt-{seq:06d}"
        prev = self.latest(hashes=False)
        tmp = None
        try:
            tmp = Path(tempfile.mkdtemp(dir=self.path, prefix=f".{final.name}.", suffix=".tmp"))
            os.chmod(tmp, 0o777 & ~_umask())
            write(tmp)
            faults.point("ckpt.after_files")
            files = {}
            for f in sorted(tmp.iterdir()):
                if f.is_file():
                    files[f.name] = {"size": f.stat().st_size, "sha256": file_sha256(f)}
            missing = [f for f in REQUIRED_FILES if f not in files]
            if missing:
                raise RuntimeError(f"checkpoint writer left out {missing}")
            atomic_write_json(tmp / COMMIT, {"seq": seq, "position": dict(position), "files": files})
            fsync_tree(tmp)
            faults.point("ckpt.before_rename")
            os.replace(tmp, final)
            tmp = None
            _fsync_dir(self.path)
        except BaseException as exc:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            ose = as_os_error(exc) if isinstance(exc, Exception) else None
            if ose is None:
                raise
            raise write_error(ose, final, intact=f"the previous checkpoint {prev}" if prev else None) from exc
        faults.point("ckpt.after_rename")
        self._link_last(final)
        faults.point("ckpt.after_link")
        self.prune()
        return final

    def _link_last(self, target: Path) -> None:
        link = self.path / "last"
        if link.exists() and not link.is_symlink():
            return  # a legacy folder named 'last': leave it (prune removes it once superseded)
        tmp = self.path / f".last.{os.getpid()}.link"
        try:
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            os.symlink(target.name, tmp)
            os.replace(tmp, link)
        except OSError as exc:  # e.g. a filesystem without symlinks: resuming does not need it
            log.debug("could not update %s: %s", link, exc)

    def prune(self) -> None:
        """Keep the newest ``keep`` complete checkpoints; remove older ones, stale temporaries
        and superseded legacy folders (each renamed to a hidden ``.trash`` name, then deleted)."""
        complete = [p for _, p in self.numbered() if verify_checkpoint(p, hashes=False) is None]
        doomed = complete[self.keep:]
        if complete:
            newest = complete[0]
            # incomplete numbered folders older than the newest complete one cannot be resumed
            doomed += [p for s, p in self.numbered() if p not in complete and s < int(newest.name[5:])]
            doomed += [self.path / n for n in ("last", "last.old")
                       if (self.path / n).is_dir() and not (self.path / n).is_symlink()]
        for p in self.path.iterdir() if self.path.is_dir() else []:
            if p.name.startswith(".") and (p.name.endswith(".tmp") or p.name.endswith(".trash")):
                doomed.append(p)
        for p in doomed:
            try:
                if p.name.endswith(".trash"):
                    trash = p
                else:
                    trash = Path(tempfile.mkdtemp(dir=self.path, prefix=f".{p.name}.", suffix=".trash"))
                    os.replace(p, trash)
                faults.point("ckpt.prune")
                shutil.rmtree(trash, ignore_errors=True)
            except OSError as exc:
                log.warning("could not remove old checkpoint %s: %s", p, exc)
