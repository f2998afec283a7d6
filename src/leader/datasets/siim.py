"""SIIM-ACR Pneumothorax Segmentation (2019) reader: pneumothorax labels and masks.

Source: SIIM-ACR Kaggle challenge ``train-rle.csv`` (``ImageId, EncodedPixels`` — note
the space after the comma in the header; ``-1`` (often written `` -1``) means no
pneumothorax; an image with several pneumothorax regions has several rows). Images are
DICOMs named ``<SOPInstanceUID>.dcm`` anywhere under ``root``.

* Label ``Pneumothorax`` = 1 if any row of the image has a mask, else 0. Images found on
  disk but absent from the CSV get NaN.
* Files under a folder named ``derived`` are not dataset images (the real pack's
  ``derived/Fake_MONOHR1.dcm`` is a header-modified copy) and are ignored.
* ``id`` ``"siim/<SOPInstanceUID>"``; ``patient_id`` / ``view`` from the DICOM header
  (``PatientID``, ``ViewPosition``) when ``check_files=True``, else the stem /
  ``UNKNOWN``; width/height/pixel_spacing from the header (``PixelSpacing`` column mm);
  with ``check_files=False`` width/height are the published 1024 x 1024.
* Masks: the extra column ``pneumothorax_rle`` (``list[str]``) holds the image's
  ``EncodedPixels`` values (``[]`` for ``-1``: known empty; None for images not in the CSV:
  unknown). They are checked when read (integers, even count, no zero-length run, inside
  the 1024 x 1024 frame; a bad value raises :class:`ManifestError` naming the file, line
  and ImageId) and decoded on demand by :func:`leader.datasets.masks.row_mask`
  (``kind="pneumothorax"``): relative offsets, column-major, 1024 x 1024 frame, rows
  united, resized nearest-neighbour to the stored image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from leader.errors import ManifestError
from leader.manifest import Manifest, make_manifest, normalize_view

from .masks import SIIM_FRAME
from ._common import as_root, check_on_error, find_required, read_sizes, read_table

__all__ = ["read_siim", "read_siim_rle", "read_siim_encodings"]


def _read_rle_table(path: Path) -> tuple[pd.Series, pd.Series]:
    df = read_table(path, what="SIIM RLE CSV", skipinitialspace=True, na_values=[])
    if "ImageId" not in df.columns or "EncodedPixels" not in df.columns:
        raise ManifestError(f"{path}: expected columns 'ImageId, EncodedPixels', got {list(df.columns)}")
    ids = df["ImageId"].fillna("").astype(str).str.strip()
    if (ids == "").any():
        line = int(np.flatnonzero((ids == "").to_numpy())[0]) + 2
        raise ManifestError(f"{path}: line {line}: empty ImageId")
    enc = df["EncodedPixels"].fillna("").astype(str).str.strip()
    return ids, enc


def read_siim_rle(path: str | os.PathLike) -> pd.Series:
    """``{ImageId: 0/1}`` (float) from a SIIM RLE CSV (``.csv`` or ``.csv.gz``).

    Raises:
        ManifestError: unreadable CSV (not UTF-8, wrong column count: names the line), no
            ``ImageId`` / ``EncodedPixels`` columns, or an empty ImageId.
    """
    ids, enc = _read_rle_table(Path(path))
    pos = ~enc.isin(["-1", ""])
    return pos.groupby(ids, sort=False).any().astype(float)


def read_siim_encodings(path: str | os.PathLike) -> dict[str, list[str]]:
    """``{ImageId: [EncodedPixels, ...]}`` in file order (``[]`` for an image whose only
    row is ``-1``), every value checked.

    Raises:
        ManifestError: as :func:`read_siim_rle`, and a malformed encoding or one whose runs
            leave the 1024 x 1024 frame (names the file, line and ImageId).
    """
    from .masks import SIIM_FRAME, parse_siim_rle

    path = Path(path)
    ids, enc = _read_rle_table(path)
    n_px = SIIM_FRAME[0] * SIIM_FRAME[1]
    out: dict[str, list[str]] = {}
    for line, (i, e) in enumerate(zip(ids.tolist(), enc.tolist()), start=2):
        lst = out.setdefault(i, [])
        try:
            pairs = parse_siim_rle(e)
        except ValueError as err:
            raise ManifestError(f"{path}: line {line}: ImageId {i!r}: {err}") from None
        if pairs is None:
            continue
        end = int(pairs.sum())
        if end > n_px:
            raise ManifestError(f"{path}: line {line}: ImageId {i!r}: EncodedPixels runs end at pixel {end}, "
                                f"past the 1024x1024 frame")
        lst.append(e)
    return out


def _is_derived(p: Path, root: Path) -> bool:
    try:
        parts = p.relative_to(root).parts[:-1]
    except ValueError:
        parts = p.parts[:-1]
    return any(part.lower() == "derived" for part in parts)


def _dicom_tags(path: Path) -> tuple[str | None, str | None]:
    try:
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["PatientID", "ViewPosition"])
        pid = str(getattr(ds, "PatientID", "") or "").strip() or None
        view = str(getattr(ds, "ViewPosition", "") or "").strip() or None
        return pid, view
    except Exception:  # noqa: BLE001 - tags are optional metadata
        return None, None


def read_siim(
    root: str | os.PathLike,
    rle_csv: str | os.PathLike | None = None,
    *,
    check_files: bool = True,
    on_error: str = "raise",
) -> Manifest:
    """Read SIIM-ACR pneumothorax labels + DICOMs under ``root`` (dataset ``siim``).

    Rows: every ImageId of the CSV (missing files skipped with one warning when
    ``check_files=True``) plus DICOMs on disk not in the CSV (label NaN).

    Raises:
        ManifestError: no RLE CSV found / malformed (names the file).
        ImageReadError: (``check_files=True``, ``on_error="raise"``) an unreadable,
            truncated or corrupt DICOM (message starts with its path).
    """
    check_on_error(on_error)
    root = as_root(root)
    if rle_csv is None:
        rle_csv = find_required(root, ["*rle*.csv", "*rle*.csv.gz"], "SIIM RLE CSV (*rle*.csv[.gz])", max_depth=2)[0]
    encodings = read_siim_encodings(rle_csv)
    labels = pd.Series({u: float(bool(e)) for u, e in encodings.items()}, dtype=float)

    on_disk: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in (".dcm", ".dicom") and not _is_derived(p, root):
            on_disk.setdefault(p.stem, p)
    uids = list(labels.index) + [u for u in on_disk if u not in labels.index]
    paths = [on_disk.get(u, root / f"{u}.dcm") for u in uids]
    ids = [f"siim/{u}" for u in uids]
    if check_files:
        infos, _, _ = read_sizes("siim", root, ids, paths, on_error)
    else:
        infos = [None] * len(ids)

    records = []
    for k, u in enumerate(uids):
        if check_files and infos[k] is None:
            continue
        pid, view = _dicom_tags(Path(paths[k])) if check_files else (None, None)
        y = labels.get(u, np.nan)
        records.append(
            {
                "id": ids[k],
                "path": str(paths[k]),
                "dataset": "siim",
                "split": "train",
                "patient_id": pid or u,
                "width": infos[k].width if infos[k] else SIIM_FRAME[0],
                "height": infos[k].height if infos[k] else SIIM_FRAME[1],
                "pixel_spacing": infos[k].pixel_spacing if infos[k] else None,
                "view": normalize_view(view),
                "normal": False,
                "labels": {"Pneumothorax": float(y)},
                "pneumothorax_rle": encodings.get(u),
            }
        )
    return make_manifest(records)
