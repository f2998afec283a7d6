"""COVID-19 metadata readers: the COVID-19 image data collection (ieee8023) and the Figure 1
and Actualmed COVID-19 chest X-ray initiatives.

Sources: ``ieee8023/covid-chestxray-dataset`` (Cohen et al., "COVID-19 image data
collection", arXiv:2003.11597 / 2006.11988; its README documents ``metadata.csv``),
``agchung/Figure1-COVID-chestxray-dataset`` and ``agchung/Actualmed-COVID-chestxray-dataset``
(``metadata.csv`` + ``images/``, the ieee8023 column convention).

The source is told by the columns of ``metadata.csv``: ``filename`` -> ieee8023 (dataset
``covid-ieee8023``, see "COVID-19 image data collection" below), ``imagename`` ->
Actualmed, else Figure 1.

* Figure 1: ``metadata.csv`` is Latin-1 (contains ``0xB0``), LF line ends; ``patientid``
  is the image file stem (any extension, e.g. ``COVID-00015a.png``). Suffix letters mark
  several images of one case (``COVID-00013a``/``b`` share sex, age and offset), so
  ``patient_id`` is the stem without a trailing lower-case letter. Dataset
  ``covid-figure1``.
* Actualmed: CRLF line ends, image file name in ``imagename``; ``patient_id`` is
  ``patientid`` (``ANON191`` has two images). Dataset ``covid-actualmed``.

Labels from ``finding`` (case-insensitive):

===========================  ============  ===========  ==========
finding                      ``COVID-19``  ``Pneumonia`` ``normal``
===========================  ============  ===========  ==========
``COVID-19`` (contains)      1             1            False
``Pneumonia`` (no COVID)     0             1            False
``No finding``               0             0            True
blank                        NaN           NaN          False
anything else                NaN           NaN          False
===========================  ============  ===========  ==========

``COVID-19`` implies ``Pneumonia`` = 1 because these initiatives collect COVID-19
*pneumonia* radiographs (COVIDx groups them as "COVID-19" pneumonia vs "normal" vs
"pneumonia"); a blank finding is unknown, not negative. ``view``: ``AP erect``/``AP`` ->
``AP``, ``PA`` -> ``PA``, lateral spellings -> ``LATERAL``, blank -> ``UNKNOWN``.
Rows whose image file is absent are skipped with one warning (``check_files=True``).

COVID-19 image data collection (``covid-ieee8023``)
---------------------------------------------------
``metadata.csv``: one row per image (several images per patient), UTF-8 or the upstream
Latin-1; quoted fields may span lines (error messages give the file line where the record
starts). Columns used: ``patientid``, ``offset`` (days since the first symptoms / admission),
``sex``, ``age``, ``finding``, ``view``, ``modality``, ``folder`` + ``filename`` (image at
``<root>/<folder>/<filename>``, ``images`` when ``folder`` is blank), ``license``, ``url``.

* Only radiographs: rows whose ``modality`` is given and is not ``X-ray`` (the collection
  also lists CT) are left out and counted in the index report (note ``not a radiograph``).
  A row whose image path lies under ``annotations/`` is never indexed (note ``annotation
  listed as image``): annotation files are not radiographs.
* **Duplicate rows** (the same ``filename`` listed more than once; in the published
  metadata 5 files are listed under two patient ids each, 285/339 and 287/340): the rule is
  *first row wins* -- the image is indexed once, from its first row in file order; the
  patient ids of all rows naming one file are merged into one patient (the id of the
  earliest row; union over shared files, so a patient-level split keeps all copies on one
  side) and the other ids are kept in ``patient_id_aliases`` (comma-separated, ``""`` when
  none). Each duplicated file gives one ``duplicate row`` note in the index report (file,
  kept line and patient, dropped lines and patients, whether the rows disagree on
  ``finding`` / ``view``) and the reader warns once with the count.
* ``finding`` -> labels (:func:`ieee8023_finding_labels`): the published file has flat
  values (``COVID-19``, ``SARS``, ``Klebsiella``, ``Pneumocystis``, ``COVID-19, ARDS``,
  ``No Finding``, ...); later releases use hierarchical ones (``Pneumonia/Viral/COVID-19``,
  ``Pneumonia/Bacterial/Streptococcus``, ``Pneumonia/Fungal/Pneumocystis``, ``Pneumonia/
  Lipoid``). Both are read: several findings are separated by ``,``; each flat value is
  mapped to its hierarchical path (:data:`IEEE8023_FINDINGS`). Label columns:

  =======================  =====================================================================
  label                    value
  =======================  =====================================================================
  ``COVID-19``             1 if a finding is COVID-19; 0 for any other known finding
  ``Pneumonia``            1 if a finding is a pneumonia (COVID-19 included); 0 for No Finding;
                           NaN for ARDS / Tuberculosis alone (not stated)
  ``Viral Pneumonia``      1 if a finding is ``Pneumonia/Viral/...`` (COVID-19, SARS,
                           MERS-CoV, Influenza, Varicella, Herpes); 0 if the pneumonia is of
                           another named type (bacterial, fungal, lipoid, aspiration) or No
                           Finding; NaN for an unspecified ``Pneumonia`` or no pneumonia
  ``Bacterial Pneumonia``  the same for ``Pneumonia/Bacterial/...`` (Streptococcus,
                           Klebsiella, Legionella, E.Coli, Mycoplasma, Chlamydophila, ...)
  ``Fungal Pneumonia``     the same for ``Pneumonia/Fungal/...`` (Pneumocystis, Aspergillosis)
  ``ARDS``                 1 if named; 0 for No Finding; NaN otherwise (not stated)
  ``Tuberculosis``         1 if named; 0 for No Finding; NaN otherwise
  =======================  =====================================================================

  ``No Finding`` gives ``normal=True`` and every label 0. Blank, ``todo``, ``Unknown`` and
  unknown values give NaN labels (unknown values: one :class:`UnknownLabelWarning`).
* ``view``: ``PA``, ``AP``, ``AP Supine`` -> ``AP``, ``L`` -> ``LATERAL`` (not frontal);
  the published value is kept in ``view_detail``.
* ``patient_id`` = ``patientid`` (after duplicate merging); ``split`` ``train`` (no
  official split); extras ``finding``, ``view_detail``, ``offset`` (days, float), ``sex``,
  ``age`` (years, float), ``license``, ``url``, ``patient_id_aliases``.
* Anatomy annotations (never disease boxes: ``boxes`` stays empty, so no disease patch is
  ever cut from a lung):

  - ``annotations/imageannotation_ai_lung_bounding_boxes.json`` (COCO, General Blockchain /
    imageannotation.ai, CC BY 4.0; coarse): categories ``Right Lung`` / ``Left Lung``,
    ``bbox = [x, y, w, h]`` in pixels of the annotated image whose ``width`` x ``height``
    the JSON gives. Mapped per axis to the stored image (:func:`~leader.datasets.frames.
    frame_scale`) into the extra column ``anatomy_boxes`` (``list[dict]`` like ``boxes``,
    labels ``right lung`` / ``left lung``: the patient's sides; None for images without an
    annotation). Annotations with null coordinates are ignored (note ``annotation
    ignored``); images whose stored aspect ratio differs from the annotated one by > 2 %
    are kept and noted (``annotation frame``), the scale being per axis.
  - ``annotations/v7labs-lungs/<image stem>.png`` (or torchxrayvision's
    ``semantic_masks_v7labs_lungs/<file name>``): **manual** lung masks (V7 Labs, CC BY 4.0)
    -> ``lung_mask`` (path; None without one). Decoded by
    :func:`leader.datasets.masks.row_mask`.
  - ``annotations/lungVAE-masks/<image stem>_mask.png``: **model-generated** lung masks
    (lungVAE; not ground truth) -> ``lung_mask_generated``.
  - ``annotations/covid-severity-scores.csv`` (``#`` comment lines, then ``filename,
    geographic_mean, opacity_mean``; Cohen et al., arXiv:2005.11856, mean of 3 raters) ->
    float columns ``geographic_extent`` (0-8) and ``opacity`` (0-6), NaN when not scored.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from leader.errors import ManifestError
from leader.manifest import Manifest, make_manifest, normalize_view

from ._common import IMAGE_SUFFIXES, as_root, check_on_error, read_sizes, read_utf8_or_latin1

__all__ = ["read_covid_metadata", "covid_finding_labels"]

SOURCES = {"figure1": "covid-figure1", "actualmed": "covid-actualmed", "ieee8023": "covid-ieee8023"}


def covid_finding_labels(finding) -> tuple[float, float, bool]:
    """``finding`` -> ``(COVID-19, Pneumonia, normal)`` per the table in the module doc."""
    if finding is None or (isinstance(finding, float) and np.isnan(finding)):
        return np.nan, np.nan, False
    f = str(finding).strip().lower()
    if not f:
        return np.nan, np.nan, False
    if "covid" in f:
        return 1.0, 1.0, False
    if f in ("no finding", "normal", "no findings"):
        return 0.0, 0.0, True
    if "pneumonia" in f:
        return 0.0, 1.0, False
    return np.nan, np.nan, False


def _read_csv_text(path: Path) -> pd.DataFrame:
    text = read_utf8_or_latin1(path)  # some COVID metadata files are Latin-1
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, ValueError) as e:  # ValueError: EmptyDataError
        raise ManifestError(f"{path}: cannot parse metadata CSV: {e}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _detect_source(df: pd.DataFrame, root: Path) -> str:
    if "filename" in df.columns:
        return "ieee8023"
    if "imagename" in df.columns:
        return "actualmed"
    return "figure1"


def read_covid_metadata(
    root: str | os.PathLike,
    source: str | None = None,
    *,
    metadata: str | os.PathLike | None = None,
    check_files: bool = True,
    on_error: str = "raise",
) -> Manifest:
    """Read a COVID-19 image data collection / Figure1 / Actualmed folder (``metadata.csv``
    + ``images/``; the collection also ``annotations/``).

    Args:
        root: dataset folder.
        source: ``"ieee8023"``, ``"figure1"`` or ``"actualmed"``; default detected (a
            ``filename`` column means the ieee8023 collection, ``imagename`` Actualmed).
        metadata: explicit CSV (default ``root/metadata.csv``).
        check_files: skip rows whose image is missing (one warning) and read sizes from
            headers; False opens no image (paths are best guesses for missing files).

    Raises:
        ManifestError: missing metadata / required columns (names the file); for ieee8023
            also an empty ``filename``, a malformed lung-box JSON or severity CSV (names the
            file and line / annotation).
        BoxError: a lung box that is invalid in its stored image (names the annotation).
        ImageReadError: (``check_files=True``, ``on_error="raise"``) an unreadable image or
            lung mask.
    """
    check_on_error(on_error)
    root = as_root(root)
    meta = Path(metadata) if metadata is not None else root / "metadata.csv"
    if not meta.is_file():
        raise ManifestError(f"{meta}: metadata CSV not found")
    df = _read_csv_text(meta)
    src = (source or _detect_source(df, root)).lower()
    src = src.replace("covid-", "").replace("-covid", "")
    if src not in SOURCES:
        raise ValueError(f"source must be one of {sorted(SOURCES)}, got {source!r}")
    dataset = SOURCES[src]
    if src == "ieee8023":
        from .covid_ieee8023 import read_ieee8023

        return read_ieee8023(root, meta, check_files=check_files, on_error=on_error)
    need = ["patientid", "finding"] + (["imagename"] if src == "actualmed" else [])
    miss = [c for c in need if c not in df.columns]
    if miss:
        raise ManifestError(f"{meta}: missing column(s) {miss}; have {list(df.columns)}")

    img_dir = root / "images" if (root / "images").is_dir() else root
    listing = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) \
        if img_dir.is_dir() else []
    by_name = {p.name: p for p in listing}
    by_stem: dict[str, Path] = {}
    for p in listing:
        by_stem.setdefault(p.stem, p)

    paths, stems, patients = [], [], []
    pids = df["patientid"].tolist()
    names = df["imagename"].tolist() if src == "actualmed" else [None] * len(df)
    for line, (pid, name) in enumerate(zip(pids, names), start=2):
        if src == "actualmed":
            if not isinstance(name, str) or not name.strip():
                raise ManifestError(f"{meta}: line {line}: empty 'imagename'")
            name = name.strip()
            p = by_name.get(name, img_dir / name)
            stem = Path(name).stem
            patient = str(pid).strip() if isinstance(pid, str) and pid.strip() else stem
        else:
            if not isinstance(pid, str) or not pid.strip():
                raise ManifestError(f"{meta}: line {line}: empty 'patientid'")
            stem = pid.strip()
            p = by_stem.get(stem, img_dir / f"{stem}.jpg")
            patient = re.sub(r"(?<=\d)[a-z]$", "", stem)
        paths.append(p)
        stems.append(stem)
        patients.append(patient)
    finding = df["finding"].tolist()
    view = df["view"].tolist() if "view" in df.columns else [None] * len(df)

    ids = [f"{dataset}/{s}" for s in stems]
    dups = pd.Series(ids)[pd.Series(ids).duplicated()].tolist()
    if dups:
        raise ManifestError(f"{meta}: duplicate image(s) {dups[:5]}")
    if check_files:
        infos, _, _ = read_sizes(dataset, root, ids, paths, on_error)
    else:
        infos = [None] * len(ids)

    records, unknown = [], []
    for k in range(len(ids)):
        if check_files and infos[k] is None:
            continue
        cov, pneu, normal = covid_finding_labels(finding[k])
        if np.isnan(cov) and isinstance(finding[k], str) and finding[k].strip():
            unknown.append(f"{ids[k]}={finding[k]!r}")
        records.append(
            {
                "id": ids[k],
                "path": str(paths[k]),
                "dataset": dataset,
                "split": "train",
                "patient_id": patients[k],
                "width": infos[k].width if infos[k] else None,
                "height": infos[k].height if infos[k] else None,
                "pixel_spacing": infos[k].pixel_spacing if infos[k] else None,
                "view": normalize_view(view[k]),
                "normal": normal,
                "labels": {"COVID-19": cov, "Pneumonia": pneu},
                "finding": finding[k] if isinstance(finding[k], str) else None,
            }
        )
    if unknown:
        warnings.warn(
            f"{dataset}: {len(unknown)} finding value(s) not mapped (labels NaN): {unknown[:5]}",
            stacklevel=2,
        )
    return make_manifest(records)
