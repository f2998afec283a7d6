"""Entanglement report: does the trunk hold both anatomy and disease, and each head its own?

Every representation (``E_DA``, ``E'_D``, ``E'_A``, each teacher, ...) is probed on

* an **anatomy task**: landmark identity of patches around named landmarks (multinomial
  logistic regression, out-of-fold accuracy with folds grouped by image, so a patch is always
  classified by a probe that never saw its image), and
* a **disease task**: image-level disease labels (one logistic regression per label,
  out-of-fold macro AUC with folds grouped by patient; labels with one value are undefined and
  left out).

The result is a 2 × N matrix (rows: tasks, columns: representations) printed, written as
Markdown + CSV and drawn as a heat map. A second 2 × N matrix holds the zero-shot versions
(leave-one-out kNN accuracy of landmark identity; retrieval precision@K with diseased-patch
queries) when the data has boxes. A LeADER student should show ``E_DA`` high on both rows,
``E'_D`` high on disease and ``E'_A`` high on anatomy, like the matching teachers.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from leader.eval.anatomy import knn_accuracy
from leader.eval.data import _groups, labelled_columns
from leader.eval.retrieval import disease_retrieval
from leader.eval.features import Representation
from leader.eval.linear_probe import cv_probe_multiclass, cv_probe_multilabel
from leader.eval.metrics import UndefinedMetricWarning, accuracy, per_class_auc
from leader.eval.report import Report, heatmap, markdown_table
from leader.manifest import Manifest

ANATOMY_ROW = "anatomy: landmark identity (probe accuracy)"
DISEASE_ROW = "disease: image labels (probe macro AUC)"
ANATOMY_ZS = "anatomy: landmark kNN accuracy (zero-shot)"
DISEASE_ZS = "disease: retrieval precision@K (zero-shot)"


def entanglement_matrix(reps: Sequence[Representation], manifest, landmarks: pd.DataFrame, *,
                        disease_patches: pd.DataFrame | None = None, seed: int = 0, n_splits: int = 5,
                        C: float = 1.0, k: int = 5, retrieval_k: int = 10, min_known: int = 4,
                        labels: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``(probe matrix, zero-shot matrix, details)``; matrices are rows × representation names,
    with a ``chance`` column."""

    m = manifest if isinstance(manifest, Manifest) else Manifest(manifest)
    names = list(labels) if labels is not None else labelled_columns(m, min_known=min_known)
    Y = m.labels_array(names) if names else np.zeros((len(m), 0))
    has = ~np.all(np.isnan(Y), axis=1) if names else np.zeros(len(m), bool)
    groups = _groups(m.df)
    lab = np.asarray([str(x) for x in landmarks["label"]])
    img_groups = np.asarray([str(x) for x in landmarks["image_id"]])
    n_cls = len(set(lab.tolist()))
    probe, zs, details = {}, {}, {}
    ycols = {n: Y[:, j] for j, n in enumerate(names)}
    for r in reps:
        emb_l = r.patches(m, landmarks)
        scores, classes = cv_probe_multiclass(emb_l, lab, img_groups, n_splits=n_splits, C=C, seed=seed)
        a = accuracy(lab, np.asarray(classes)[scores.argmax(1)])
        d = float("nan")
        und = {}
        if has.sum() >= 4:
            emb_i = r.images(m)[has]
            s = cv_probe_multilabel(emb_i, Y[has], groups[has], n_splits=n_splits, C=C, seed=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                res = per_class_auc(Y[has], s, names, warn=False)
            d, und = res.macro, res.undefined
        probe[r.name] = {ANATOMY_ROW: a, DISEASE_ROW: d}
        kk = max(1, min(k, len(lab) - 1))
        zrow = {ANATOMY_ZS: knn_accuracy(emb_l, lab, k=kk)}
        if disease_patches is not None and len(disease_patches):
            try:
                rr = disease_retrieval(r.patches(m, disease_patches), list(disease_patches["label"]),
                                       list(disease_patches["image_id"]), r.images(m), list(m.df["id"]), ycols,
                                       k=retrieval_k, seed=seed)
                zrow[DISEASE_ZS] = rr.mean
                zchance = rr.chance
            except ValueError:
                zrow[DISEASE_ZS] = float("nan")
                zchance = float("nan")
        zs[r.name] = zrow
        details[r.name] = {"anatomy_accuracy": a, "disease_macro_auc": d, "disease_undefined": und, **zrow}
    pm = pd.DataFrame(probe)
    pm["chance"] = [1.0 / max(1, n_cls), 0.5]
    zm = pd.DataFrame(zs)
    zch = [1.0 / max(1, n_cls)]
    if DISEASE_ZS in zm.index:
        zch.append(zchance)
    zm["chance"] = zch
    return pm, zm, details


def run_entanglement(reps: Sequence[Representation], manifest, landmarks: pd.DataFrame, out: str | Path, *,
                     disease_patches: pd.DataFrame | None = None, seed: int = 0, n_splits: int = 5, C: float = 1.0,
                     k: int = 5, retrieval_k: int = 10, min_known: int = 4, data: str = "",
                     command: str = "") -> pd.DataFrame:
    """Write ``entanglement.md/.csv/.json`` and ``figures/entanglement.png``; return the probe matrix."""
    if len(landmarks) < 4:
        raise ValueError(f"the entanglement report needs landmark patches (got {len(landmarks)})")
    pm, zm, details = entanglement_matrix(reps, manifest, landmarks, disease_patches=disease_patches, seed=seed,
                                          n_splits=n_splits, C=C, k=k, retrieval_k=retrieval_k, min_known=min_known)
    rep = Report(out, "entanglement", "Entanglement report: what each embedding holds")
    rep.text(f"Data: {data}" if data else "",
             f"Anatomy task: {len(landmarks)} landmark patches from {landmarks['image_id'].nunique()} images, "
             f"{landmarks['label'].nunique()} landmarks; disease task: image-level labels. Probes: logistic "
             f"regression (C={C}), {n_splits}-fold cross-validation grouped by image (anatomy) / patient (disease), "
             f"seed {seed}. Chance: 1 / number of landmarks; AUC 0.5.",
             f"Command: `{command}`" if command else "")
    rep.table(pm.reset_index().rename(columns={"index": "task"}), "entanglement",
              caption="**Linear probe (out-of-fold)**")
    rep.table(zm.reset_index().rename(columns={"index": "task"}), "entanglement-zero-shot",
              caption=f"**Zero-shot** (kNN k={k}; retrieval K={retrieval_k}, query's own image excluded)")
    best = [f"{row}: {pm.drop(columns='chance').loc[row].idxmax()}" for row in pm.index
            if np.isfinite(pm.drop(columns="chance").loc[row].to_numpy(dtype=float)).any()]
    rep.text("Best per task: " + "; ".join(best) + ".")
    heatmap(pm.drop(columns="chance"), rep.figures / "entanglement.png", "probe: anatomy vs disease")
    rep.figure(rep.figures / "entanglement.png", "entanglement matrix")
    rep.write({"seed": seed, "n_splits": n_splits, "C": C, "k": k, "retrieval_k": retrieval_k}, details)
    return pm


def format_matrix(pm: pd.DataFrame) -> str:
    """The matrix as a Markdown table (for printing)."""
    return markdown_table(pm.reset_index().rename(columns={"index": "task"}))
