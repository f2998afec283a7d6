"""Small shared helpers: atomic file writes and JSON I/O.

Every file the project writes that another step later reads (checkpoints, configs, embedding
store shards and index, manifests) goes through :func:`atomic_path` / :func:`atomic_write`:
the data is written to a temporary file *in the same directory*, flushed and fsynced, and
then moved over the destination with :func:`os.replace`, which is atomic on POSIX and
Windows. A crash therefore leaves either the old file or the new one, never a truncated one;
at worst a hidden ``.<name>.*.tmp`` file is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = [
    "atomic_path",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "read_json",
    "atomic_dir",
    "fsync_tree",
    "file_sha256",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Best-effort fsync of a directory so that a rename survives a power loss."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it over ``path`` atomically.

    Use this for libraries that write by file name (``safetensors.save_file``,
    ``torch.save``, ``DataFrame.to_parquet``)::

        with atomic_path(out / "model.safetensors") as tmp:
            save_file(tensors, tmp)

    The parent directory is created if needed. If the body raises, the temporary file is
    removed and ``path`` is left untouched. The final file gets the usual ``0o666 & ~umask``
    permissions (not the ``0o600`` of :mod:`tempfile`).

    Args:
        path: destination file.

    Yields:
        :class:`pathlib.Path` of the temporary file (it exists, empty, when yielded).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # flush the library's data to disk before the rename
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file for writing; on success it atomically replaces ``path``.

    Args:
        path: destination file.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        encoding: text encoding (ignored in binary mode).

    Yields:
        The open file object.

    Raises:
        ValueError: ``mode`` is not a write mode.
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": ""}
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (tmp file in the same directory + ``os.replace``)."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path, "w", encoding=encoding) as fh:
        fh.write(text)


def _json_default(obj: Any) -> Any:
    # numpy scalars / arrays, tuples inside containers, paths
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable: {obj!r}")


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """Dump ``obj`` as JSON (UTF-8, trailing newline) to ``path`` atomically.

    numpy scalars/arrays (anything with ``.tolist()``), paths and sets are converted;
    NaN/Infinity are refused (``allow_nan=False``) because they are not valid JSON.

    Raises:
        TypeError: an object that cannot be serialised (the message names its type).
        ValueError: a NaN or infinite float.
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=_json_default, allow_nan=False)
    atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a decoding error is re-raised as ``ValueError`` naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON: {exc}") from exc


def fsync_tree(directory: str | os.PathLike) -> None:
    """fsync every file under ``directory`` and the directories themselves (best effort)."""
    directory = Path(directory)
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            with open(p, "rb+") as fh:
                os.fsync(fh.fileno())
    for d in [directory, *(p for p in directory.rglob("*") if p.is_dir())]:
        _fsync_dir(d)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it replaces ``path`` as a whole.

    The body fills the temporary folder; on success every file is fsynced, an existing
    ``path`` is renamed away, the temporary folder is renamed to ``path`` and the old one is
    deleted. A crash inside the body leaves ``path`` untouched (plus a hidden
    ``.<name>.*.tmp`` folder); a crash between the two renames leaves the complete new
    folder under its hidden temporary name and the old one under ``.<name>.*.trash``.
    A failing body removes the temporary folder and re-raises.

    Yields:
        :class:`pathlib.Path` of the (empty) temporary folder.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        fsync_tree(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        trash = None
        if path.exists():
            trash = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".trash"))
            os.replace(path, trash)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes, read in ``chunk``-byte blocks.

    Raises:
        OSError: the file cannot be read.
    """
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def name_value_pairs(items, flag: str, form: str = "NAME=VALUE", unique: bool = True) -> dict[str, str]:
    """``["a=1", "b=2"]`` → ``{"a": "1", "b": "2"}`` (command-line ``NAME=VALUE`` options).

    Args:
        items: the strings (a mapping is returned as a plain ``dict`` copy).
        flag: the option's name, for messages (``--teacher``).
        form: what an item looks like, for messages (``NAME=PATH``).
        unique: a name given twice is an error (otherwise the last one wins).

    Raises:
        ValueError: an item without ``=``, or a name given twice (names the flag).
    """
    if isinstance(items, dict):
        return dict(items)
    out: dict[str, str] = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"{flag} {item!r} must look like {form}")
        k, v = item.split("=", 1)
        k, v = k.strip(), v.strip()
        if unique and k in out:
            raise ValueError(f"{flag}: {k!r} given twice")
        out[k] = v
    return out
