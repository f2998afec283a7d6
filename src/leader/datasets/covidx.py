"""COVIDx CXR (COVID-Net, Wang, Lin & Wong 2020) reader: the split ``.txt`` files.

Sources: Wang et al., "COVID-Net: a tailored deep convolutional neural network design for
detection of COVID-19 cases from chest X-ray images", Sci. Rep. 10 (2020);
lindawangg/COVID-Net ``docs/COVIDx.md``; COVID-Net issue 25 (RSNA duplicates, BR-07).

Format
------
``train.txt`` / ``val.txt`` / ``test.txt`` (also ``train_COVIDx*.txt``, ``test_COVIDx9A.txt``
...): one image per line, **space-separated**::

    <patient id> <file name> <class> <data source>

(the oldest releases have no source field). The patient id may itself contain spaces
(``COVID 2 COVID(2).png COVID-19 sirm`` is a valid line: patient ``COVID 2``), so a line is
parsed **from the end** (:func:`parse_covidx_line`): the last field is the source unless it
is a class name (then there is no source and ``source`` is None, unknown), the field before
it the class, the one before that the file name, and everything before the file name (its
inner spacing kept) the patient id. Classes are ``normal`` / ``pneumonia`` /
``COVID-19`` (COVIDx v1-v8A, 3-class) or ``positive`` / ``negative`` (COVIDx v7B+ and
CXR-3/4, binary COVID-19). Images are in ``train/``, ``val/``, ``test/`` next to the files.

Labels (own vocabulary, 1 / 0 / NaN)
------------------------------------
========================  ============  =============  ==========
class                     ``COVID-19``  ``pneumonia``  ``normal``
========================  ============  =============  ==========
``COVID-19`` / positive   1             0 / NaN        False
``pneumonia``             0             1              False
``normal``                0             0              True
``negative``              0             NaN            False
========================  ============  =============  ==========

``pneumonia`` means non-COVID-19 pneumonia (the 3-class scheme); in the binary scheme it is
unknown (NaN). Class names are case-insensitive; any other class raises
:class:`ManifestError` naming the file and line. ``split`` from the file name; ``id``
``"covidx/<stem>"``; ``patient_id`` = the patient-id field; extra ``source`` (None when the
line has none) and ``covidx_class``. A listed image that is missing is skipped (one
:class:`~leader.datasets.MissingFileWarning`) and reported with the split file's line. The same file name in
two split files raises (a leak). COVIDx re-uses RSNA / NIH / Figure1 / Actualmed images:
do not combine it with those sets without a duplicate check
(:func:`leader.datasets.splits.duplicate_groups`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from leader.errors import ManifestError
from leader.manifest import Manifest

from ._common import as_root, check_on_error, split_files, stored_sizes, table_manifest

__all__ = ["read_covidx", "parse_covidx_line", "COVIDX_CLASSES"]

#: class (lower case) -> (COVID-19, pneumonia, normal)
COVIDX_CLASSES = {
    "covid-19": (1.0, 0.0, False), "covid19": (1.0, 0.0, False), "covid": (1.0, 0.0, False),
    "positive": (1.0, np.nan, False),
    "pneumonia": (0.0, 1.0, False),
    "normal": (0.0, 0.0, True),
    "negative": (0.0, np.nan, False),
}


def parse_covidx_line(line: str) -> tuple[str, str, str, str | None]:
    """``(patient id, file name, class, source or None)`` of one split-file line, parsed from
    the end (see the module docstring); the class is returned as written.

    Raises:
        ValueError: fewer than 3 fields, or no COVIDx class in the class position (the
            message says which; callers add the file and line).
    """
    parts = line.strip().rsplit(None, 3)
    if len(parts) < 3:
        raise ValueError(f"expected '<patient id> <file name> <class> [<source>]', got {line.strip()!r}")
    if parts[-1].lower() in COVIDX_CLASSES:  # no source field
        head = line.strip().rsplit(None, 2)
        return head[0], head[1], head[2], None
    if len(parts) < 4:
        raise ValueError(f"unknown class {parts[-1]!r} (expected normal / pneumonia / COVID-19 / positive / "
                         f"negative)")
    pid, fn, cls, src = parts
    if cls.lower() not in COVIDX_CLASSES:
        raise ValueError(f"unknown class {cls!r} (expected normal / pneumonia / COVID-19 / positive / negative)")
    return pid, fn, cls, src


def _split_of(p: Path) -> str:
    s = p.stem.lower()
    for key, split in (("train", "train"), ("val", "val"), ("test", "test")):
        if s.startswith(key) or f"_{key}" in s:
            return split
    raise ManifestError(f"{p}: cannot tell the split from the file name (expected train / val / test in it)")


def read_covidx(
    root: str | os.PathLike,
    metadata: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    *,
    check_files: bool = True,
    on_error: str = "raise",
) -> Manifest:
    """Read COVIDx under ``root`` (dataset ``covidx``); see the module docstring.

    Args:
        metadata: split ``.txt`` files; default ``train*.txt``, ``val*.txt``, ``test*.txt``
            directly in ``root``.

    Raises:
        ManifestError: no split file, a line with fewer than 3 fields, an unknown class,
            a file name listed twice (names file and line).
        ImageReadError: (``check_files=True``, ``on_error="raise"``) an unreadable image.
    """
    check_on_error(on_error)
    root = as_root(root)
    files = split_files(root, metadata, ["train*.txt", "val*.txt", "test*.txt"],
                        "COVIDx split file (train.txt / test.txt)", _split_of, max_depth=0)
    rows = []
    seen: dict[str, str] = {}
    for f in files:
        split = _split_of(f)
        try:
            text = Path(f).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise ManifestError(f"{f}: cannot read COVIDx split file: {e}") from None
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{f}: line {line_no}"
            try:
                pid, fn, cls, src = parse_covidx_line(line)
            except ValueError as e:
                raise ManifestError(f"{where}: {e}") from None
            key = cls.strip().lower()
            if fn in seen:
                raise ManifestError(f"{where}: {fn!r} already listed at {seen[fn]}")
            seen[fn] = where
            rows.append((pid, fn, key, src, split, where))
    n = len(rows)
    paths = []
    for pid, fn, key, src, split, _ in rows:
        cands = [root / split / fn, root / fn, root / "images" / fn]
        p = next((c for c in cands if (c.parent.is_dir() and c.exists())), None) if check_files else None
        paths.append(str(p or cands[0]))
    stems = [os.path.splitext(r[1])[0] for r in rows]
    ids = np.array([f"covidx/{s}" for s in stems], dtype=object)
    if len(set(ids.tolist())) != n:
        ids = np.array([f"covidx/{r[4]}/{s}" for r, s in zip(rows, stems)], dtype=object)
    w, h, sp_mm, keep = stored_sizes("covidx", root, ids, np.asarray(paths, dtype=object), check_files, on_error,
                                     where=[r[5] for r in rows])
    vals = np.array([COVIDX_CLASSES[r[2]][:2] for r in rows], dtype=np.float32).reshape(n, 2)
    return table_manifest(ids=ids, paths=paths, dataset="covidx", split=np.array([r[4] for r in rows], dtype=object),
                          patient_id=[r[0] for r in rows], width=w, height=h, pixel_spacing=sp_mm, view="UNKNOWN",
                          normal=np.array([COVIDX_CLASSES[r[2]][2] for r in rows], dtype=bool),
                          labels={"COVID-19": vals[:, 0], "pneumonia": vals[:, 1]},
                          extras={"source": np.array([r[3] for r in rows], dtype=object),
                                  "covidx_class": np.array([r[2] for r in rows], dtype=object)},
                          keep=keep)
