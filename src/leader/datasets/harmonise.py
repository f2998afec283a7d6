"""Harmonised label vocabulary across datasets.

Every reader keeps its dataset's **own** label names (``label:<native name>``, values
1 / 0 / NaN). :func:`harmonise` maps them onto one shared vocabulary,
:data:`HARMONISED_LABELS`, with the per-dataset tables of :data:`HARMONISED_MAP`.

Rules
-----
* A harmonised label ``H`` of dataset ``d`` is the three-valued OR of its sources
  ``HARMONISED_MAP[d][H]``: 1 if any source is 1; else NaN if any source is NaN; else 0.
  E.g. PadChest ``Atelectasis`` = OR(``atelectasis``, ``laminar atelectasis``, ...).
* A harmonised label that a dataset does not map is NaN (unknown) for its rows, never 0.
* Native names not used by the table are dropped (or kept as ``native:<name>`` extra
  columns with ``keep_native=True``).
* A dataset without a table (e.g. a plain folder) keeps the labels whose names already are
  harmonised names.

The table (also in ``docs/datasets.md``; :func:`mapping_table` renders it) follows the
dataset documentation and torchxrayvision's mappings (e.g. NIH box label ``Infiltrate`` ->
``Infiltration`` happens in the NIH reader; CheXpert ``Pleural Effusion`` -> ``Effusion``;
PadChest synonyms as in torchxrayvision's ``PC_Dataset``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from leader.manifest import CORE_COLUMNS, LABEL_PREFIX, Manifest

__all__ = ["HARMONISED_LABELS", "HARMONISED_MAP", "harmonise", "mapping_table", "NATIVE_PREFIX"]

NATIVE_PREFIX = "native:"

_NIH14 = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
          "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")

#: The shared vocabulary, in column order (the first 19 are the original pack labels).
HARMONISED_LABELS: tuple[str, ...] = _NIH14 + (
    "Tuberculosis",
    "ActiveTuberculosis",
    "ObsoletePulmonaryTuberculosis",
    "PulmonaryTuberculosis",
    "COVID-19",
    "Enlarged Cardiomediastinum",
    "Lung Opacity",
    "Lung Lesion",
    "Nodule/Mass",
    "Fracture",
    "Support Devices",
    "Aortic Enlargement",
    "Calcification",
)

_CHEXPERT = {
    "Atelectasis": ("Atelectasis",), "Cardiomegaly": ("Cardiomegaly",), "Effusion": ("Pleural Effusion",),
    "Pneumonia": ("Pneumonia",), "Pneumothorax": ("Pneumothorax",), "Consolidation": ("Consolidation",),
    "Edema": ("Edema",), "Enlarged Cardiomediastinum": ("Enlarged Cardiomediastinum",),
    "Lung Opacity": ("Lung Opacity",), "Lung Lesion": ("Lung Lesion",), "Fracture": ("Fracture",),
    "Support Devices": ("Support Devices",),
}

#: dataset -> harmonised label -> native source labels (three-valued OR).
HARMONISED_MAP: dict[str, dict[str, tuple[str, ...]]] = {
    "nih": {**{n: (n,) for n in _NIH14}, "Nodule/Mass": ("Nodule", "Mass")},
    "chexpert": _CHEXPERT,
    "mimic": _CHEXPERT,
    "padchest": {
        "Atelectasis": ("atelectasis", "laminar atelectasis", "lobar atelectasis", "segmental atelectasis",
                        "round atelectasis", "total atelectasis", "atelectasis basal"),
        "Cardiomegaly": ("cardiomegaly",),
        "Effusion": ("pleural effusion", "loculated pleural effusion", "loculated fissural effusion"),
        "Infiltration": ("infiltrates", "interstitial pattern", "ground glass pattern",
                         "reticular interstitial pattern", "reticulonodular interstitial pattern",
                         "alveolar pattern", "consolidation", "air bronchogram"),
        "Mass": ("mass", "pulmonary mass"),
        "Nodule": ("nodule", "multiple nodules"),
        "Nodule/Mass": ("nodule", "multiple nodules", "mass", "pulmonary mass"),
        "Pneumonia": ("pneumonia", "atypical pneumonia"),
        "Pneumothorax": ("pneumothorax", "hydropneumothorax"),
        "Consolidation": ("consolidation", "air bronchogram"),
        "Edema": ("pulmonary edema",),
        "Emphysema": ("emphysema",),
        "Fibrosis": ("pulmonary fibrosis",),
        "Pleural_Thickening": ("pleural thickening", "apical pleural thickening", "calcified pleural thickening"),
        "Hernia": ("hiatal hernia",),
        "Tuberculosis": ("tuberculosis",),
        "Fracture": ("fracture", "rib fracture", "callus rib fracture", "clavicle fracture", "humeral fracture",
                     "vertebral fracture"),
    },
    "vindr": {
        "Atelectasis": ("Atelectasis",), "Cardiomegaly": ("Cardiomegaly",), "Effusion": ("Pleural effusion",),
        "Infiltration": ("Infiltration",), "Consolidation": ("Consolidation",), "Edema": ("Edema",),
        "Emphysema": ("Emphysema",), "Fibrosis": ("Pulmonary fibrosis",),
        "Pleural_Thickening": ("Pleural thickening",), "Pneumothorax": ("Pneumothorax",),
        "Pneumonia": ("Pneumonia",), "Tuberculosis": ("Tuberculosis",), "Lung Opacity": ("Lung Opacity",),
        "Nodule/Mass": ("Nodule/Mass",), "Aortic Enlargement": ("Aortic enlargement",),
        "Calcification": ("Calcification",), "Fracture": ("Rib fracture", "Clavicle fracture"),
    },
    "chestx-det": {
        "Atelectasis": ("Atelectasis",), "Calcification": ("Calcification",), "Cardiomegaly": ("Cardiomegaly",),
        "Consolidation": ("Consolidation",), "Effusion": ("Effusion",), "Emphysema": ("Emphysema",),
        "Fibrosis": ("Fibrosis",), "Fracture": ("Fracture",), "Mass": ("Mass",), "Nodule": ("Nodule",),
        "Nodule/Mass": ("Nodule", "Diffuse Nodule", "Mass"), "Pleural_Thickening": ("Pleural Thickening",),
        "Pneumothorax": ("Pneumothorax",),
    },
    "node21": {"Nodule": ("Nodule",), "Nodule/Mass": ("Nodule",)},
    "jsrt": {"Nodule": ("Nodule",), "Nodule/Mass": ("Nodule",)},
    "rsna": {"Pneumonia": ("Pneumonia",), "Lung Opacity": ("Pneumonia",)},
    "siim": {"Pneumothorax": ("Pneumothorax",)},
    "tbx11k": {n: (n,) for n in ("Tuberculosis", "ActiveTuberculosis", "ObsoletePulmonaryTuberculosis",
                                 "PulmonaryTuberculosis")},
    "shenzhen": {"Tuberculosis": ("Tuberculosis",)},
    "montgomery": {"Tuberculosis": ("Tuberculosis",)},
    "covidx": {"COVID-19": ("COVID-19",), "Pneumonia": ("COVID-19", "pneumonia")},
    "covid-figure1": {"COVID-19": ("COVID-19",), "Pneumonia": ("Pneumonia",)},
    "covid-actualmed": {"COVID-19": ("COVID-19",), "Pneumonia": ("Pneumonia",)},
    "covid-ieee8023": {"COVID-19": ("COVID-19",), "Pneumonia": ("Pneumonia",), "Tuberculosis": ("Tuberculosis",)},
}


def _or3(cols: list[np.ndarray]) -> np.ndarray:
    """Three-valued OR of float arrays (1 / 0 / NaN)."""
    a = np.vstack(cols)
    one = (a == 1).any(axis=0)
    nan = np.isnan(a).any(axis=0)
    out = np.zeros(a.shape[1], dtype=np.float32)
    out[nan] = np.nan
    out[one] = 1.0
    return out


def harmonise(
    m: Manifest,
    *,
    keep_native: bool = False,
    mapping: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
) -> Manifest:
    """A copy of ``m`` whose label columns are the harmonised labels (see module doc).

    Label columns come in :data:`HARMONISED_LABELS` order (then any extra names a custom
    ``mapping`` introduces); only labels that some row can know are emitted. Native label
    columns are dropped, or kept as float32 extra columns ``native:<name>`` when
    ``keep_native``. ``mapping`` overrides / extends :data:`HARMONISED_MAP` per dataset.
    """
    table = dict(HARMONISED_MAP)
    if mapping:
        table.update({k: {h: tuple(v) for h, v in d.items()} for k, d in mapping.items()})
    df = m.df
    n = len(df)
    native = m.label_names
    ds = df["dataset"].to_numpy(dtype=object)
    out: dict[str, np.ndarray] = {}
    for d in pd.unique(ds):
        rows = ds == d
        tmap = table.get(d)
        if tmap is None:
            tmap = {nm: (nm,) for nm in native if nm in HARMONISED_LABELS}
        for h, srcs in tmap.items():
            cols = [df[LABEL_PREFIX + s].to_numpy(dtype=np.float32)[rows] for s in srcs if s in native]
            if not cols:
                continue
            if h not in out:
                out[h] = np.full(n, np.nan, dtype=np.float32)
            out[h][rows] = _or3(cols)
    order = [h for h in HARMONISED_LABELS if h in out] + [h for h in out if h not in HARMONISED_LABELS]
    base = df.drop(columns=m.label_columns)
    add = {LABEL_PREFIX + h: out[h] for h in order}
    if keep_native:
        add.update({NATIVE_PREFIX + nm: df[LABEL_PREFIX + nm].to_numpy(dtype=np.float32) for nm in native})
    new = pd.concat([base, pd.DataFrame(add, index=base.index)], axis=1)
    labels = [LABEL_PREFIX + h for h in order]
    extras = [c for c in new.columns if c not in CORE_COLUMNS and c not in labels]
    return Manifest(new[list(CORE_COLUMNS) + labels + extras], validate=False)


def mapping_table(datasets: Sequence[str] | None = None) -> str:
    """Markdown table ``| harmonised | dataset | native label(s) |`` of :data:`HARMONISED_MAP`."""
    lines = ["| harmonised label | dataset | native label(s) (three-valued OR) |", "|---|---|---|"]
    for h in HARMONISED_LABELS:
        for d, t in HARMONISED_MAP.items():
            if datasets is not None and d not in datasets:
                continue
            if h in t:
                lines.append(f"| {h} | {d} | " + ", ".join(f"`{s}`" for s in t[h]) + " |")
    return "\n".join(lines)
