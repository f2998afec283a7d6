"""Index a data root (the real-cxr pack, or any folder of datasets) into one Manifest.

Detection is by *content*, so renamed folders still work:

==============  =========================================================================
reader          a folder is this dataset when it holds ...
==============  =========================================================================
``nih``         ``Data_Entry_2017*.csv[.gz]`` (in the folder itself)
``tbx11k``      ``annotations/json/*.json`` (and usually ``imgs/``)
``jsrt``        ``CLNDAT_EN.txt`` or ``CNNDAT_EN.TXT`` (in the folder or its
                ``Clinical_Information/``)
``covid``       ``metadata.csv`` with ``patientid`` and ``finding`` columns: the COVID-19
                image data collection (ieee8023) when it has ``filename``, Actualmed when
                it has ``imagename``, else Figure1
``siim``        ``*rle*.csv[.gz]`` (in the folder) whose header starts with ``ImageId``
``rsna``        ``*train_labels*.csv[.gz]`` (in the folder) with header
                ``patientId,x,y,width,height,Target``
``chexpert``    ``train.csv`` / ``valid.csv`` (in the folder or its ``CheXpert-v1.0*/``)
                whose header starts with ``Path`` and has ``Frontal/Lateral``
``mimic``       ``mimic-cxr-2*metadata*.csv[.gz]`` (in the folder or a version folder
                such as ``2.0.0/``)
``padchest``    ``PADCHEST_chest_x_ray_images_labels*.csv[.gz]`` (in the folder)
``vindr``       ``train.csv`` / ``annotations*.csv`` / ``vinbigdata*.csv`` (in the folder,
                its ``annotations/``, or ``<version>/annotations/``) whose header has
                ``image_id`` and ``class_name``
``chestx-det``  ``ChestX_Det*.json`` (in the folder)
``node21``      ``metadata.csv`` (in the folder) with ``img_name`` and ``label``
``covidx``      ``train*.txt`` / ``test*.txt`` whose first line is ``<pid> <file> <class>
                [<source>]`` with a COVIDx class
``shenzhen``    ``CHNCXR_nnnn_t.*`` or ``MCUCXR_nnnn_t.*`` images in the folder or its
                ``CXR_png/`` (read by :func:`~leader.datasets.shenzhen.read_shenzhen`,
                which names the datasets ``shenzhen`` / ``montgomery``)
``folder``      anything else holding image files (masks excluded), read with
                :func:`~leader.datasets.generic.read_folder`, dataset = folder name
==============  =========================================================================

The rules for the older readers (``nih`` ... ``rsna``) are tried first, so folders they
match keep being read by them.

In the real-cxr pack these are ``nih-chestxray14``, ``tbx11k``, ``jsrt-hybridgnet``,
``figure1-covid``, ``actualmed-covid``, ``siim-acr-pneumothorax`` and the unlabelled
folders ``covid-chestxray-dataset`` (no ``metadata.csv`` there), ``opencxr``, ``node21``,
``dicom-samples``, ``lung-segmentation-2d``. In the real-cxr-large pack they are
``nih-chestxray14`` (``nih``) and ``covid-chestxray-dataset`` (``covid``, ieee8023 layout;
its ``annotations/`` folder is read as annotations, never as images). Folders without
images (``licenses``) and hidden folders are ignored.

:func:`index_root` adds one ``label gap`` note per dataset to the active
:func:`~leader.datasets.collect_skipped` list (the index report) for the label columns that
dataset does not annotate (unknown for all its rows).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from leader.errors import ManifestError
from leader.manifest import LABEL_PREFIX, Manifest, make_manifest

from ._common import as_root, check_on_error, csv_header, find_first, record_note
from .chestx_det import read_chestx_det
from .chexpert import read_chexpert
from .covid import read_covid_metadata
from .covidx import parse_covidx_line, read_covidx
from .generic import list_images, read_folder
from .harmonise import HARMONISED_LABELS
from .jsrt import read_jsrt
from .mimic import read_mimic
from .nih import read_nih
from .node21 import read_node21
from .padchest import read_padchest
from .rsna import read_rsna
from .shenzhen import read_shenzhen
from .siim import read_siim
from .tbx11k import read_tbx11k
from .vindr import read_vindr

__all__ = ["index_root", "detect_dataset", "READERS", "read_dataset", "DATASET_ALIASES"]

#: Registry of dataset readers by name; each is ``reader(root, ..., check_files=True) -> Manifest``.
READERS: dict[str, Callable[..., Manifest]] = {
    "nih": read_nih,
    "tbx11k": read_tbx11k,
    "jsrt": read_jsrt,
    "covid": read_covid_metadata,
    "siim": read_siim,
    "rsna": read_rsna,
    "folder": read_folder,
    "chexpert": read_chexpert,
    "mimic": read_mimic,
    "padchest": read_padchest,
    "vindr": read_vindr,
    "chestx-det": read_chestx_det,
    "node21": read_node21,
    "covidx": read_covidx,
    "shenzhen": read_shenzhen,
}

#: Other spellings accepted by :func:`read_dataset` / ``leader data index --dataset``.
DATASET_ALIASES = {
    "chestx-ray14": "nih", "chestxray14": "nih", "nih-chestxray14": "nih", "mimic-cxr": "mimic",
    "mimic-cxr-jpg": "mimic", "vindr-cxr": "vindr", "vinbigdata": "vindr", "chestx-det10": "chestx-det",
    "chestxdet": "chestx-det", "chestx_det": "chestx-det", "tbx-11k": "tbx11k", "siim-acr": "siim",
    "rsna-pneumonia": "rsna", "montgomery": "shenzhen", "nlm-tb": "shenzhen", "figure1": "covid",
    "actualmed": "covid", "node-21": "node21", "ieee8023": "covid", "covid-chestxray-dataset": "covid",
    "covid-ieee8023": "covid",
}


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
        cols = csv_header(meta)
        if "patientid" in cols and "finding" in cols:
            return "covid"
    for p in find_first(folder, ["*rle*.csv", "*rle*.csv.gz"], max_depth=0):
        cols = csv_header(p)
        if cols and cols[0] == "ImageId":
            return "siim"
    for p in find_first(folder, ["*train_labels*.csv", "*train_labels*.csv.gz"], max_depth=0):
        if csv_header(p)[:6] == ["patientId", "x", "y", "width", "height", "Target"]:
            return "rsna"
    return _detect_more(folder)


def _detect_more(folder: Path) -> str | None:
    """Rules for the newer readers. Files are looked for in ``folder`` itself and only in the
    sub-folders of the documented release layouts (``CheXpert-v1.0*/``, a version folder such
    as ``2.0.0/``, ``annotations/``, ``CXR_png/``), so that a root holding several datasets is
    not mistaken for one of them."""
    import re

    version = re.compile(r"^\d+(\.\d+)+$")
    subdirs = [c for c in sorted(folder.iterdir()) if c.is_dir()] if folder.is_dir() else []

    def here_or(names_ok, patterns) -> list[Path]:
        hits = find_first(folder, patterns, max_depth=0)
        for c in subdirs:
            if names_ok(c.name):
                hits += find_first(c, patterns, max_depth=0)
                if c.name.lower() != "annotations":
                    a = c / "annotations"
                    if a.is_dir():
                        hits += find_first(a, patterns, max_depth=0)
        return hits

    chexpert_dir = re.compile(r"^chexpert-v1\.0", re.IGNORECASE)
    for p in here_or(lambda n: bool(chexpert_dir.match(n)), ["train.csv", "valid.csv", "train.csv.gz",
                                                             "valid.csv.gz"]):
        cols = csv_header(p)
        if cols[:1] == ["Path"] and "Frontal/Lateral" in cols:
            return "chexpert"
    if here_or(lambda n: bool(version.match(n)), ["mimic-cxr-2*metadata*.csv", "mimic-cxr-2*metadata*.csv.gz"]):
        return "mimic"
    if find_first(folder, ["PADCHEST_chest_x_ray_images_labels*.csv",
                           "PADCHEST_chest_x_ray_images_labels*.csv.gz"], max_depth=0):
        return "padchest"
    for p in here_or(lambda n: bool(version.match(n)) or n.lower() == "annotations",
                     ["train.csv", "train.csv.gz", "annotations*.csv", "annotations*.csv.gz",
                      "vinbigdata*.csv", "vinbigdata*.csv.gz"]):
        cols = {c.lower() for c in csv_header(p)}
        if {"image_id", "class_name"} <= cols:
            return "vindr"
    if find_first(folder, ["ChestX_Det*.json"], max_depth=0):
        return "chestx-det"
    for p in find_first(folder, ["metadata.csv"], max_depth=0):
        cols = set(csv_header(p))
        if {"img_name", "label"} <= cols:
            return "node21"
    for p in find_first(folder, ["train*.txt", "test*.txt"], max_depth=0):
        try:
            with open(p, encoding="utf-8", errors="replace") as fh:
                first = fh.readline(4096)
        except OSError:
            continue
        try:
            parse_covidx_line(first)  # parsed from the end: patient ids may contain spaces
        except ValueError:
            continue
        return "covidx"
    pat = re.compile(r"^(CHNCXR|MCUCXR)_\d{4}_[01]\.", re.IGNORECASE)
    for d in [folder] + [c for c in subdirs if c.name.lower() == "cxr_png"]:
        try:
            if any(pat.match(e.name) for e in os.scandir(d)):
                return "shenzhen"
        except OSError:
            continue
    return None


def read_dataset(
    name: str,
    root: str | os.PathLike,
    metadata: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
    *,
    check_files: bool = True,
    on_error: str = "raise",
    **options,
) -> Manifest:
    """Read one dataset with its reader, passing ``metadata`` files to the right argument.

    ``name`` is a :data:`READERS` key or an alias of :data:`DATASET_ALIASES`
    (case-insensitive). ``metadata`` (explicit metadata files) is routed per reader: NIH
    files by name (``*bbox*`` -> ``bbox_list``, ``test_list*`` -> ``test_list``, else
    ``data_entry``); TBX11K ``.json`` -> ``json_files``, ``.txt`` -> ``list_files``; COVID
    ``metadata``; SIIM ``rle_csv``; RSNA ``*class_info*`` -> ``class_info``, else
    ``labels_csv``; folder ``labels_csv``; the newer readers take ``metadata`` as is.
    ``options`` are passed on (e.g. ``uncertain="ones"`` for CheXpert, ``radiologists=
    "consensus"`` for VinDr).

    Raises:
        ValueError: unknown dataset name, or metadata for a reader that takes none (JSRT).
    """
    key = str(name).strip().lower()
    key = DATASET_ALIASES.get(key, key)
    if key not in READERS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(READERS)} (aliases {sorted(DATASET_ALIASES)})")
    reader = READERS[key]
    files = [] if metadata is None else (
        [Path(metadata)] if isinstance(metadata, (str, os.PathLike)) else [Path(f) for f in metadata])
    kw = dict(options)
    if files:
        if key == "nih":
            for f in files:
                low = f.name.lower()
                if "bbox" in low:
                    kw["bbox_list"] = f
                elif low.startswith("test_list"):
                    kw["test_list"] = f
                else:
                    kw["data_entry"] = f
        elif key == "tbx11k":
            kw["json_files"] = [f for f in files if f.suffix.lower() == ".json"]
            lists = [f for f in files if f.suffix.lower() == ".txt"]
            if lists:
                kw["list_files"] = lists
        elif key == "covid":
            kw["metadata"] = files[0]
        elif key == "siim":
            kw["rle_csv"] = files[0]
        elif key == "rsna":
            for f in files:
                kw["class_info" if "class_info" in f.name.lower() else "labels_csv"] = f
        elif key == "folder":
            kw["labels_csv"] = files[0]
        elif key == "jsrt":
            raise ValueError("jsrt reads CLNDAT_EN.txt / CNNDAT_EN.TXT found under --root; it takes no --metadata")
        else:
            kw["metadata"] = files
    return reader(root, check_files=check_files, on_error=on_error, **kw)


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
        on_error: ``"raise"`` (fail fast) or ``"skip"`` for unreadable, truncated or corrupt
            images (see :func:`leader.io.verify_image`); skipped images are recorded in the
            active :func:`~leader.datasets.collect_skipped` list.

    Raises:
        ManifestError: ``root`` does not exist or contains no images at all; malformed
            metadata of a detected dataset (names file and line).
        ImageReadError: (``on_error="raise"``) the first unreadable, truncated or corrupt
            image (message starts with its path).
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
    m = _canonical_label_order(Manifest.concat(parts))
    _note_label_gaps(m)
    return m


def _note_label_gaps(m: Manifest) -> None:
    """One ``label gap`` note per dataset (labels unknown for all its rows) in the report."""
    gaps = m.label_gaps()
    for ds, g in gaps.groupby("dataset", sort=False):
        labels = g["label"].tolist()
        record_note("label gap", ds, f"{ds}: {len(labels)} label column(s) not annotated, unknown (NaN) for its "
                    f"{int(g['rows'].iloc[0])} rows: {', '.join(labels)}", labels=labels, rows=int(g["rows"].iloc[0]))


def _canonical_label_order(m: Manifest) -> Manifest:
    """Label columns in :data:`leader.datasets.HARMONISED_LABELS` order, others after."""

    names = m.label_names
    order = [n for n in HARMONISED_LABELS if n in names] + [n for n in names if n not in HARMONISED_LABELS]
    if order == names:
        return m
    cols = list(m.df.columns)
    first = cols.index(LABEL_PREFIX + names[0])
    rest = [c for c in cols[first:] if not (isinstance(c, str) and c.startswith(LABEL_PREFIX))]
    df = m.df[cols[:first] + [LABEL_PREFIX + n for n in order] + rest]
    return Manifest(df, validate=False)
