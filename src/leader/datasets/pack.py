"""Index a data root (the real-cxr pack, or any folder of datasets) into one Manifest.

Detection is by *content*, so renamed folders still work:

==========  =========================================================================
reader      a folder is this dataset when it holds ...
==========  =========================================================================
``nih``     ``Data_Entry_2017*.csv[.gz]`` (in the folder itself)
``tbx11k``  ``annotations/json/*.json`` (and usually ``imgs/``)
``jsrt``    ``CLNDAT_EN.txt`` or ``CNNDAT_EN.TXT`` (in the folder or its
            ``Clinical_Information/``)
``covid``   ``metadata.csv`` with ``patientid`` and ``finding`` columns (Figure1, or
            Actualmed when it has ``imagename``; the ieee8023 ``filename`` layout is not
            handled here)
``siim``    ``*rle*.csv[.gz]`` (in the folder) whose header starts with ``ImageId``
``rsna``    ``*train_labels*.csv[.gz]`` (in the folder) with header
            ``patientId,x,y,width,height,Target``
``folder``  anything else holding image files (masks excluded), read with
            :func:`~leader.datasets.generic.read_folder`, dataset = folder name
==========  =========================================================================

In the real-cxr pack these are ``nih-chestxray14``, ``tbx11k``, ``jsrt-hybridgnet``,
``figure1-covid``, ``actualmed-covid``, ``siim-acr-pneumothorax`` and the unlabelled
folders ``covid-chestxray-dataset``, ``opencxr``, ``node21``, ``dicom-samples``,
``lung-segmentation-2d``. Folders without images (``licenses``) and hidden folders are
ignored.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Callable, Sequence

from leader.errors import ManifestError
from leader.manifest import LABEL_PREFIX, Manifest, make_manifest

from ._common import as_root, check_on_error, find_first
from .covid import read_covid_metadata
from .generic import list_images, read_folder
from .jsrt import read_jsrt
from .nih import read_nih
from .rsna import read_rsna
from .siim import read_siim
from .tbx11k import read_tbx11k

__all__ = ["index_root", "detect_dataset", "READERS"]

#: Registry of dataset readers by name; each is ``reader(root, ..., check_files=True) -> Manifest``.
READERS: dict[str, Callable[..., Manifest]] = {
    "nih": read_nih,
    "tbx11k": read_tbx11k,
    "jsrt": read_jsrt,
    "covid": read_covid_metadata,
    "siim": read_siim,
    "rsna": read_rsna,
    "folder": read_folder,
}


def _csv_header(path: Path) -> list[str]:
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            line = fh.readline(65536)
    except OSError:
        return []
    text = line.decode("latin-1").strip().lstrip("\ufeff").lstrip("ï»¿")
    return [c.strip() for c in text.split(",")]


def detect_dataset(folder: str | os.PathLike) -> str | None:
    """Name of the :data:`READERS` entry whose files are in ``folder`` (None if none).

    Never returns ``"folder"``; see the module docstring for the rules.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if find_first(folder, ["Data_Entry_2017*.csv", "Data_Entry_2017*.csv.gz"], max_depth=0):
        return "nih"
    jdir = folder / "annotations" / "json"
    if jdir.is_dir() and any(p.suffix.lower() == ".json" for p in jdir.iterdir()):
        return "tbx11k"
    for d in [folder] + [c for c in folder.iterdir() if c.is_dir() and c.name.lower() == "clinical_information"]:
        if find_first(d, ["CLNDAT_EN.txt", "CNNDAT_EN.txt"], max_depth=0):
            return "jsrt"
    meta = folder / "metadata.csv"
    if meta.is_file():
        cols = _csv_header(meta)
        if "patientid" in cols and "finding" in cols and ("imagename" in cols or "filename" not in cols):
            return "covid"
    for p in find_first(folder, ["*rle*.csv", "*rle*.csv.gz"], max_depth=0):
        cols = _csv_header(p)
        if cols and cols[0] == "ImageId":
            return "siim"
    for p in find_first(folder, ["*train_labels*.csv", "*train_labels*.csv.gz"], max_depth=0):
        if _csv_header(p)[:6] == ["patientId", "x", "y", "width", "height", "Target"]:
            return "rsna"
    return None


def index_root(
    root: str | os.PathLike,
    check_files: bool = True,
    *,
    datasets: Sequence[str] | None = None,
    on_error: str = "raise",
) -> Manifest:
    """One :class:`Manifest` for every dataset found under ``root``.

    ``root`` may itself be one dataset (e.g. it contains ``Data_Entry_2017*.csv``); else
    each immediate sub-folder is detected with :func:`detect_dataset` and read with its
    reader, and sub-folders that are no known dataset but hold images are indexed with
    :func:`read_folder` (dataset = folder name). If nothing is found in sub-folders and
    ``root`` holds images, ``root`` itself is read as a folder. Manifests are joined with
    :meth:`Manifest.concat` (label columns = union, NaN where a dataset lacks a label),
    label columns ordered as :data:`leader.datasets.HARMONISED_LABELS`, others after.

    Args:
        check_files: passed to every reader (skip missing images; read sizes).
        datasets: optional filter on reader names (``"nih"``, ``"folder"``, ...) or
            folder names.
        on_error: ``"raise"`` or ``"skip"`` for unreadable image headers.

    Raises:
        ManifestError: ``root`` does not exist or contains no images at all.
    """
    check_on_error(on_error)
    root = as_root(root)
    wanted = set(datasets) if datasets is not None else None

    def run(kind: str, folder: Path) -> Manifest:
        if kind == "folder":
            return read_folder(folder, dataset=folder.name, check_files=check_files, on_error=on_error)
        return READERS[kind](folder, check_files=check_files, on_error=on_error)

    kind = detect_dataset(root)
    if kind is not None:
        return run(kind, root)

    parts: list[Manifest] = []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        kind = detect_dataset(child)
        if kind is None:
            if not list_images(child):
                continue
            kind = "folder"
        if wanted is not None and kind not in wanted and child.name not in wanted:
            continue
        m = run(kind, child)
        if len(m):
            parts.append(m)
    if not parts and list_images(root) and (wanted is None or "folder" in wanted):
        parts.append(read_folder(root, dataset=root.name, check_files=check_files, on_error=on_error))
    if not parts:
        if wanted is not None:
            return make_manifest([])
        raise ManifestError(f"{root}: no known dataset and no images found")
    return _canonical_label_order(Manifest.concat(parts))


def _canonical_label_order(m: Manifest) -> Manifest:
    """Label columns in :data:`leader.datasets.HARMONISED_LABELS` order, others after."""
    from leader.datasets import HARMONISED_LABELS

    names = m.label_names
    order = [n for n in HARMONISED_LABELS if n in names] + [n for n in names if n not in HARMONISED_LABELS]
    if order == names:
        return m
    cols = list(m.df.columns)
    first = cols.index(LABEL_PREFIX + names[0])
    rest = [c for c in cols[first:] if not (isinstance(c, str) and c.startswith(LABEL_PREFIX))]
    df = m.df[cols[:first] + [LABEL_PREFIX + n for n in order] + rest]
    return Manifest(df, validate=False)
