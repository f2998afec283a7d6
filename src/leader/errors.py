"""Project error types.

Every error raised on bad input names the offending file, row or box, so that a
failure deep inside a DataLoader worker can still be traced to its source.
"""

from __future__ import annotations

from typing import Sequence


class LeaderError(Exception):
    """Base class of all LeADER errors."""


class ImageReadError(LeaderError, ValueError):
    """A file could not be decoded into a usable radiograph.

    Raised for truncated/corrupt files, unknown formats, constant images and
    missing decoders. The message always starts with the file path.
    """


class DicomReadError(ImageReadError):
    """A DICOM file lacks pixel data / transfer syntax or has no decoder (field report BR-03)."""


class ManifestError(LeaderError, ValueError):
    """A metadata file or manifest row is malformed; the message names file and row."""


class BoxError(LeaderError, ValueError):
    """A bounding box is invalid for its image (zero area, outside the image, NaN)."""


class TeacherInputError(LeaderError, ValueError):
    """A batch violates a teacher's declared input contract (field report BR-05)."""


class WriteError(LeaderError, OSError):
    """Output could not be written: disk full, read-only filesystem, quota, permissions.

    The message names the file being written, the operating-system reason and which earlier
    result is still intact (``docs/RELIABILITY.md``). ``errno`` is the original error number.
    """

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno N]" prefix
        return str(self.args[1]) if len(self.args) == 2 else super().__str__()


def write_error(exc: OSError, target: object, intact: str | None = None) -> WriteError:
    """A :class:`WriteError` explaining ``exc`` (raised while writing ``target``).

    Args:
        exc: the original ``OSError`` (``ENOSPC``, ``EROFS``, ``EDQUOT``, ``EACCES``, ``EFBIG``...).
        target: the file or folder that was being written.
        intact: what is still good, e.g. ``"the previous checkpoint run/checkpoints/ckpt-000003"``.
    """
    import errno as _errno
    import os as _os

    hints = {
        _errno.ENOSPC: "the disk is full",
        getattr(_errno, "EDQUOT", -1): "the disk quota is exceeded",
        _errno.EROFS: "the filesystem is read-only",
        _errno.EACCES: "permission denied",
        _errno.EPERM: "operation not permitted",
        _errno.EFBIG: "the file is larger than allowed (file-size limit)",
    }
    code = exc.errno if exc.errno is not None else 0
    what = hints.get(code, _os.strerror(code) if code else str(exc))
    msg = f"could not write {target}: {what} ({exc})"
    msg += f"; {intact} is intact" if intact else "; nothing earlier was overwritten"
    return WriteError(code, msg)


def as_os_error(exc: BaseException) -> OSError | None:
    """``exc`` as an ``OSError`` when it reports an operating-system write/read failure.

    Libraries with native writers do not always raise ``OSError``: safetensors raises
    ``SafetensorError("... I/O error: File too large (os error 27)")``. This finds the errno in
    such messages so that callers can report a full disk the same way whoever wrote the file.
    Returns ``None`` for anything else.
    """
    import re as _re

    if isinstance(exc, OSError):
        return exc
    m = _re.search(r"os error (\d+)", str(exc))
    if m:
        return OSError(int(m.group(1)), str(exc))
    return None


#: errors of one sample that a ``skip`` policy records and steps over (unreadable or vanished
#: file, size that disagrees with the manifest, invalid box); anything else stops the run.
SKIPPABLE = (ImageReadError, ManifestError, BoxError, OSError)


def skip_report(items: Sequence, policy: str) -> dict:
    """The JSON-ready report of what an index (or a training / embedding run) left out.

    ``items``: :class:`leader.datasets._common.SkippedItem` s or dicts with at least ``id`` and ``reason`` (training
    adds ``stage`` / ``epoch``; an id may then appear once per epoch). Returns ``{"policy",
    "count" (distinct ids), "occurrences" (items), "counts_by_reason", "items", "notes",
    "counts_by_note"}``: ``counts_by_reason`` counts by reason category (the part of
    ``reason`` before the first ``:``, e.g. ``"missing file"`` or an error class name),
    sorted by count; ``items`` as dicts, in the given order unless they carry ``stage`` /
    ``epoch`` (then sorted by stage, epoch, id); ``notes`` the :class:`IndexNote` s of a
    :class:`SkipLog` (``[]`` otherwise) and ``counts_by_note`` their count per kind.
    """
    dicts = [it.to_dict() if hasattr(it, "to_dict") else dict(it) for it in items]
    counts: dict[str, int] = {}
    for it in dicts:
        kind = str(it["reason"]).split(":", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    counts = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    if any("stage" in it or "epoch" in it for it in dicts):
        dicts.sort(key=lambda it: (it.get("stage", 0), it.get("epoch", 0), str(it["id"])))
    notes = [n.to_dict() for n in getattr(items, "notes", [])]
    by_note: dict[str, int] = {}
    for n in notes:
        by_note[n["kind"]] = by_note.get(n["kind"], 0) + 1
    return {"policy": policy, "count": len({str(it["id"]) for it in dicts}), "occurrences": len(dicts),
            "counts_by_reason": counts, "items": dicts, "notes": notes, "counts_by_note": by_note}
