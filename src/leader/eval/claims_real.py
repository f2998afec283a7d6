"""The real setting of the claims runner: real radiographs, experts fitted on the training split.

Data (default ``../shared/data/real-cxr-large``: NIH ChestX-ray14 and the COVID-19 image data
collection, in their published layouts): frontal views only (PA / AP), split **by patient**
70 / 10 / 20 with a fixed seed; ``--test-root`` adds a folder whose images all join the test
split (used for nothing else).

* **Experts** (``leader teachers fit``, recipes ``cfg.fit``): a supervised disease expert and an
  anatomy expert, both fitted on the training split only; their own validation numbers are in
  their ``fit_report.json`` and in the report. A teacher whose ``teachers.<name>.source`` is set
  in the config (e.g. CXR Foundation embeddings, an Adam checkpoint) is used as given instead;
  the premise rows then measure it on the test split.
* **Anatomy task**: lung zones (right / left × upper / middle / lower, mediastinum, outside) of
  patches cut from the manual lung masks and lung boxes (:func:`leader.zones.zone_patches`), as
  labels of the zero-shot kNN evaluation — no model is trained on them.
* **Disease task**: the image-level labels with at least ``MIN_TEST_POSITIVES`` positives and
  negatives on the test split; lesion level from the NIH expert boxes (diseased patches) and
  healthy patches of normal images.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from leader.config import Config
from leader.datasets.pack import index_root
from leader.datasets.splits import assign_splits
from leader.eval.claims import World
from leader.eval.features import Representation, teacher_source
from leader.manifest import Manifest
from leader.recipe import fit_teacher, patch_tables, resolve_teachers, train_split
from leader.zones import zone_patches

log = logging.getLogger(__name__)

__all__ = ["prepare_real", "DEFAULT_ROOT", "MIN_TEST_POSITIVES"]

#: where the shared real pack lies, relative to the repository root (the working directory of CI)
DEFAULT_ROOT = Path("../shared/data/real-cxr-large")
#: a disease label is evaluated when the test split holds at least this many positives and negatives
MIN_TEST_POSITIVES = 15


def real_manifest(root: str | Path, test_root: str | Path | None = None, seed: int = 0) -> Manifest:
    """Index ``root`` (frontal views), split by patient 70/10/20; ``test_root`` rows join the test split.

    Raises:
        FileNotFoundError: ``root`` (or ``test_root``) is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"real claims: data root {root} is not a folder (give --data-root)")
    m = index_root(root, check_files=True)
    m = m.subset(m.df["view"].isin(["PA", "AP"]).to_numpy())
    m = assign_splits(m, val=0.1, test=0.2, seed=seed, respect_official=False)
    if test_root is not None:
        t = index_root(Path(test_root), check_files=True)
        t = t.subset(t.df["view"].isin(["PA", "AP"]).to_numpy())
        df = t.df.copy()
        df["split"] = "test"
        df["patient_id"] = "test-root/" + df["patient_id"].astype(str)
        m = Manifest.concat([m, Manifest(df)])
    return m


def prepare_real(out: str | Path, cfg: Config, data_root: str | Path | None = None,
                 test_root: str | Path | None = None, landmark_root: str | Path | None = None,
                 say: Callable[[str], None] = print) -> World:
    """The real setting (:class:`leader.eval.claims.World`); fits the experts when ``out`` lacks them.

    Args:
        out: the claims output folder (``manifest.parquet``, ``teachers/<name>/``).
        cfg: the students' config; ``cfg.fit`` gives the experts' recipes and ``cfg.teachers``
            their names (one of kind ``disease``, one of kind ``anatomy``).
        data_root: default :data:`DEFAULT_ROOT`.
        test_root: an extra folder used only as test data.
        landmark_root: unused for now (the anatomy task is lung zones); reserved for a folder
            of JSRT/SCR landmarks.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "manifest.parquet"
    if path.is_file():
        m = Manifest.load(path)
    else:
        m = real_manifest(data_root or DEFAULT_ROOT, test_root, seed=0)
        m.save(path)
    split = m.df["split"].astype(str).to_numpy()
    te = split == "test"
    Y = m.labels_array()
    labels = [n for j, n in enumerate(m.label_names)
              if np.sum(Y[te, j] == 1) >= MIN_TEST_POSITIVES and np.sum(Y[te, j] == 0) >= MIN_TEST_POSITIVES]
    if not labels:
        raise ValueError(f"real claims: no disease label has {MIN_TEST_POSITIVES} positives and negatives on the "
                         "test split")
    split_of = dict(zip(m.df["id"].astype(str), split))
    zones = zone_patches(m, on_error="skip")
    zones = zones[~zones["coarse"].to_numpy(bool)].reset_index(drop=True)  # manual masks only
    every = patch_tables(cfg, m, landmarks=False)
    lesion = pd.concat([every.disease, every.healthy], ignore_index=True)
    for t in (zones, lesion):
        t["split"] = [split_of[str(i)] for i in t["image_id"]]
    train_tables = patch_tables(cfg, train_split(m), landmarks=False)
    # ---- the experts: fitted on the training split, validated on the validation split --------
    names = {k: cfg.teachers_of_kind(k) for k in ("disease", "anatomy")}
    if not all(names.values()):
        raise ValueError("real claims need one teacher of kind disease and one of kind anatomy in the config")
    sources, reports = {}, {}
    for kind, (name, *_) in names.items():
        given = cfg.teachers[name].source
        if given:  # the user's own expert (a checkpoint, an exported teacher or an embedding store)
            say(f"using the configured {name} expert ({kind}): {given}")
            sources[name], reports[name] = given, {"note": f"given in the config (teachers.{name}.source); "
                                                           "its own validation is the premise rows"}
            continue
        folder = out / "teachers" / name
        if not (folder / "teacher.json").is_file():
            say(f"fitting the {name} expert ({kind}) on the training split")
            fit_teacher(cfg, kind, m, folder)
        sources[name] = str(folder)
        rep = folder / "fit_report.json"
        reports[name] = json.loads(rep.read_text()).get("validation", {}) if rep.is_file() else {}
    teachers = resolve_teachers(cfg, sources)
    reps = {n: Representation(teacher_source(t, name=f"{n} expert"), "embedding", label=f"{n} expert")
            for n, t in teachers.items()}
    counts = m.df.groupby("dataset").size().to_dict()
    n = pd.Series(split).value_counts().to_dict()
    desc = (f"{len(m)} real frontal radiographs ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}; "
            f"patients split 70/10/20: train {n.get('train', 0)} / val {n.get('val', 0)} / test {n.get('test', 0)} "
            f"images); disease labels evaluated: {', '.join(labels)}; anatomy: {len(zones)} lung-zone patches from "
            f"manual masks ({int((zones['split'] == 'test').sum())} on test images); lesion level: "
            f"{len(every.disease)} expert boxes, {len(every.healthy)} healthy patches")
    return World("real", m, cfg, teachers, reps, train_tables, zones, lesion, labels, desc,
                 teacher_reports=reports, anatomy_task="lung zone", retrieval_k=int(cfg.eval.retrieval_k))
