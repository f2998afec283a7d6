"""Helpers shared by the dataset readers (file discovery, header reads, skip warnings)."""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from leader.errors import ImageReadError, ManifestError

#: File suffixes treated as images by folder scans (lower case).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".mha", ".mhd", ".nii",
                            ".tif", ".tiff", ".bmp", ".img"})

_SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                "validation": "val", "test": "test", "testing": "test"}


class MissingFileWarning(UserWarning):
    """Rows were skipped because their image file does not exist."""


class UnreadableFileWarning(UserWarning):
    """Rows were skipped (``on_error="skip"``) because their image header could not be read."""


@dataclass(frozen=True)
class HeaderInfo:
    width: int
    height: int
    pixel_spacing: float | None  # mm per pixel, column direction


def read_size(path: str | os.PathLike) -> HeaderInfo:
    """Stored width/height (pixels) and column pixel spacing (mm, or None) of an image,
    from :func:`leader.io.read_header` (no pixel decode; format sniffed from content).

    Raises:
        ImageReadError: the header cannot be read (message starts with the path).
    """
    from leader.io import read_header

    meta = read_header(Path(path))
    ps = getattr(meta, "pixel_spacing", None)
    col_mm = None
    if ps is not None:
        try:
            col_mm = float(ps[1]) if isinstance(ps, (tuple, list)) else float(ps)
        except (TypeError, ValueError, IndexError):
            col_mm = None
    return HeaderInfo(int(meta.width), int(meta.height), col_mm)


def warn_skipped(dataset: str, ids: Sequence[str], reason: str, root: Path | str,
                 category: type[Warning] = MissingFileWarning) -> None:
    """One warning naming the count and the first few ids of skipped rows."""
    if not ids:
        return
    head = ", ".join(map(str, list(ids)[:5]))
    more = "" if len(ids) <= 5 else f", ... (+{len(ids) - 5} more)"
    warnings.warn(
        f"{dataset}: skipped {len(ids)} row(s) under {root}: {reason}: {head}{more}",
        category,
        stacklevel=3,
    )


def check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def read_sizes(
    dataset: str,
    root: Path,
    ids: Sequence[str],
    paths: Sequence[Path | str],
    on_error: str = "raise",
) -> tuple[list[HeaderInfo | None], list[str], list[str]]:
    """Header sizes for existing files.

    Returns ``(infos, missing_ids, unreadable_ids)``; ``infos[i]`` is None for a missing or
    (with ``on_error="skip"``) unreadable file. Emits one :class:`MissingFileWarning`
    and one :class:`UnreadableFileWarning` (with the reasons) when rows are skipped.
    """
    check_on_error(on_error)
    infos: list[HeaderInfo | None] = []
    missing: list[str] = []
    unreadable: list[str] = []
    reasons: list[str] = []
    for i, p in zip(ids, paths):
        p = Path(p)
        if not p.is_file():
            missing.append(i)
            infos.append(None)
            continue
        try:
            infos.append(read_size(p))
        except ImageReadError as e:
            if on_error == "raise":
                raise
            unreadable.append(i)
            reasons.append(f"{i} ({e})")
            infos.append(None)
    warn_skipped(dataset, missing, "image file missing", root)
    if unreadable:
        warn_skipped(dataset, reasons, "image header unreadable", root, UnreadableFileWarning)
    return infos, missing, unreadable


def unique_ids(dataset: str, root: Path, paths: Sequence[Path]) -> list[str]:
    """``"{dataset}/{stem}"`` per file; stems that collide use the relative path
    (without suffix, ``/``-separated) instead so that ids stay unique."""
    stems = [p.stem for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    out = []
    for p, s in zip(paths, stems):
        if counts[s] == 1:
            out.append(f"{dataset}/{s}")
        else:
            try:
                rel = p.relative_to(root)
            except ValueError:
                rel = Path(p.name)
            out.append(f"{dataset}/{rel.with_suffix('').as_posix()}")
    return out


def split_from_path(path: Path, root: Path) -> str | None:
    """``train``/``val``/``test`` when a folder between ``root`` and the file is so named."""
    try:
        parts = path.relative_to(root).parts[:-1]
    except ValueError:
        parts = path.parts[:-1]
    for part in parts:
        s = _SPLIT_WORDS.get(part.lower())
        if s:
            return s
    return None


def as_root(root: str | os.PathLike) -> Path:
    r = Path(root).expanduser()
    if not r.exists():
        raise ManifestError(f"{r}: dataset root does not exist")
    return r.resolve()


def find_first(root: Path, patterns: Sequence[str], max_depth: int = 3) -> list[Path]:
    """Files matching any glob pattern (case-insensitive on the file name) within
    ``max_depth`` folder levels below ``root``, shallowest first, then sorted."""
    regs = [re.compile(_glob_to_re(p), re.IGNORECASE) for p in patterns]
    hits: list[tuple[int, str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        if depth >= max_depth:
            dirnames[:] = []
        dirnames.sort()
        for f in filenames:
            if any(r.fullmatch(f) for r in regs):
                hits.append((depth, f, Path(dirpath) / f))
    hits.sort(key=lambda t: (t[0], str(t[2])))
    return [h[2] for h in hits]


def _glob_to_re(pat: str) -> str:
    import fnmatch

    return fnmatch.translate(pat)
