"""Baselines and ablations in one comparison table (paper §6).

A named *ablation set* (``configs/ablations.yaml``, or a YAML file of the same shape) lists
variants; each variant trains one student (Algorithm 1, :class:`leader.train.loop.Trainer`)
from the same teachers and base config, with its own config overrides (loss, backbone) and
its own choice of teachers (both = LeADER, disease branch only, anatomy branch only). With
``baselines: true`` the teachers alone and their concatenation are evaluated too.

Every student (its ``E_DA``) and baseline is scored with the same four numbers, for each
seed: landmark identity by out-of-fold probe accuracy and by leave-one-out kNN accuracy
(anatomy), image-level disease labels by out-of-fold probe macro AUC, and disease retrieval
precision@K (disease). Seeds change the student's training and the probe folds. The table
gives mean ± std over seeds and a two-sample t-test against the best (Table 2 style).

Students are trained on the manifest's train split (the teachers' data); the evaluation probes are
cross-validated by image / patient.
"""

from __future__ import annotations

import logging
import time
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import yaml

from leader.config import Config, load_config, with_overrides
from leader.eval.ensembles import concat_representation
from leader.eval.entanglement import ANATOMY_ROW, ANATOMY_ZS, DISEASE_ROW, DISEASE_ZS, entanglement_matrix
from leader.eval.features import Representation, student_source, teacher_source
from leader.eval.protocols import slug
from leader.eval.report import Report, bar_chart
from leader.eval.stats import results_table, wide_table
from leader.manifest import Manifest
from leader.patches import disease_patches as make_disease_patches
from leader.patches import landmark_patches
from leader.recipe import distil
from leader.teachers.spec import load_teacher

log = logging.getLogger(__name__)

TASKS = {ANATOMY_ROW: "anatomy probe acc.", ANATOMY_ZS: "anatomy kNN acc.", DISEASE_ROW: "disease probe AUC",
         DISEASE_ZS: "retrieval P@K"}


def load_ablation_sets(path: str | Path | None = None) -> dict:
    """The ``sets`` mapping of ``configs/ablations.yaml`` (or of the YAML file ``path``)."""
    text = (Path(path).read_text() if path else
            resources.files("leader").joinpath("configs", "ablations.yaml").read_text())
    data = yaml.safe_load(text) or {}
    sets = data.get("sets")
    if not isinstance(sets, dict) or not sets:
        raise ValueError(f"{path or 'ablations.yaml'}: needs a non-empty 'sets' mapping")
    return sets


def resolve_set(name: str, sets: Mapping) -> dict:
    """``{"description", "baselines", "variants": [{"name", "overrides", "teachers"}]}`` with
    ``include`` expanded.

    Raises:
        KeyError: unknown set (lists the known ones).
    """
    if name not in sets:
        raise KeyError(f"unknown ablation set {name!r}; known: {sorted(sets)}")
    s = sets[name]
    variants = []
    for inc in s.get("include", []) or []:
        variants += resolve_set(inc, sets)["variants"]
    for v in s.get("variants", []) or []:
        if "name" not in v:
            raise ValueError(f"ablation set {name!r}: a variant without a name: {v}")
        variants.append({"name": str(v["name"]), "overrides": dict(v.get("overrides") or {}),
                         "teachers": list(v["teachers"]) if v.get("teachers") else None})
    seen: set[str] = set()
    uniq = []
    for v in variants:
        if v["name"] not in seen:
            seen.add(v["name"])
            uniq.append(v)
    if not uniq:
        raise ValueError(f"ablation set {name!r} has no variants")
    return {"description": s.get("description", ""), "baselines": bool(s.get("baselines", False)), "variants": uniq}


def train_student(manifest: Manifest, teachers: Mapping, cfg: Config | Mapping, out_dir: str | Path) -> Path:
    """Distil ``teachers`` into a new student with ``cfg`` through :func:`leader.recipe.distil`
    (each teacher's stages from ``cfg.teachers``); a finished run in ``out_dir`` is reused.
    Returns the final checkpoint folder."""
    return distil(cfg, dict(teachers), out_dir, manifest=manifest, reuse=True)


def run_ablation(set_name: str, manifest, teachers: Mapping[str, object], out: str | Path, *,
                 cfg: Config | None = None, config: str | None = "demo-quick", overrides: Sequence[str] = (),
                 seeds: Sequence[int] = (0,),
                 landmarks: pd.DataFrame | None = None, disease_patches: pd.DataFrame | None = None,
                 retrieval_k: int = 10, n_splits: int = 5, k: int = 5, sets_file: str | Path | None = None,
                 data: str = "", command: str = "") -> pd.DataFrame:
    """Train and evaluate every variant of ``set_name``; write ``ablation.md/.csv`` and a bar chart.

    Args:
        teachers: ``{name: Teacher or spec for :func:`leader.teachers.spec.load_teacher`}``; each
            name needs a role in the config's ``teachers:`` (the paper's: disease, anatomy).
        cfg: the validated base config (what ``leader eval ablation`` passes); else
        config, overrides: base training config (preset or YAML) and ``key=value`` overrides.
            Each variant's own overrides are applied, then ``overrides`` again on top (so
            ``--set`` can shrink every variant).
        landmarks, disease_patches: patch tables for the evaluation (default: the manifest's
            ``jsrt166`` landmarks and its boxes).

    Returns:
        Long records ``method, task, seed, value``.
    """
    m = manifest if isinstance(manifest, Manifest) else Manifest(manifest)
    spec = resolve_set(set_name, load_ablation_sets(sets_file))
    tobj = {n: (load_teacher(n, t) if isinstance(t, (str, Path)) else t) for n, t in teachers.items()}
    base = cfg if cfg is not None else load_config(config, overrides)
    lm = landmarks if landmarks is not None else landmark_patches(m)
    if disease_patches is None:
        disease_patches, _ = make_disease_patches(m, on_bad_box="skip")
    out = Path(out)
    rep = Report(out, "ablation", f"Ablation set '{set_name}'")
    records, timings = [], {}
    for seed in seeds:
        reps: list[Representation] = []
        for v in spec["variants"]:
            v = {**v, "teachers": v["teachers"] or list(tobj)}  # default: every teacher given
            missing = [t for t in v["teachers"] if t not in tobj]
            if missing:
                raise KeyError(f"variant {v['name']!r} needs teacher(s) {missing}; given {sorted(tobj)}")
            vcfg = with_overrides(with_overrides(base, v["overrides"]), list(overrides) + [f"seed={int(seed)}"])
            run_dir = out / "runs" / slug(v["name"]) / f"seed-{seed}"
            t0 = time.time()
            final = train_student(m, {t: tobj[t] for t in v["teachers"]}, vcfg, run_dir)
            timings[f"{v['name']}|{seed}"] = round(time.time() - t0, 1)
            src = student_source(final, name=v["name"])
            reps.append(Representation(src, "e_da", label=v["name"]))
        if spec["baselines"]:
            for n, t in tobj.items():
                reps.append(Representation(teacher_source(t, name=f"{n} teacher"), "embedding"))
            if len(tobj) >= 2:
                reps.append(concat_representation(reps[-len(tobj):], "teachers concat"))
        pm, zm, _ = entanglement_matrix(reps, m, lm, disease_patches=disease_patches, seed=seed, n_splits=n_splits,
                                        k=k, retrieval_k=retrieval_k)
        for mat in (pm, zm):
            for row in mat.index:
                for col in mat.columns:
                    if col != "chance":
                        records.append({"method": col, "task": TASKS.get(row, row), "seed": seed,
                                        "value": float(mat.loc[row, col])})
    rec = pd.DataFrame(records)
    table = results_table(rec)
    rep.text(f"{spec['description']}." if spec["description"] else "",
             f"Data: {data}" if data else "",
             f"Base config: `{config}`" + (f" with {list(overrides)}" if overrides else "") + f"; seeds {list(seeds)}. "
             "Students: E_DA; baselines: the teachers' embeddings and their L2-normalised concatenation. "
             f"Tasks: anatomy = landmark identity ({len(lm)} patches; out-of-fold probe accuracy, LOO {k}-NN accuracy); "
             f"disease = image labels (out-of-fold probe macro AUC) and retrieval precision@{retrieval_k} "
             f"({len(disease_patches)} diseased-patch queries). Cells: mean ± std over seeds; bold = best; "
             "p = two-sample t-test against the best.",
             f"Command: `{command}`" if command else "")
    rep.table(wide_table(table), caption="**Comparison**")
    table.to_csv(out / "ablation-table.csv", index=False)
    rec.to_csv(out / "ablation.csv", index=False)
    bar_chart(table, rep.figures / "ablation.png", f"ablation set '{set_name}'", ylabel="score")
    rep.figure(rep.figures / "ablation.png", "ablation")
    rep.write({"set": set_name, "variants": spec["variants"], "config": config, "overrides": list(overrides),
               "seeds": list(seeds), "retrieval_k": retrieval_k, "n_splits": n_splits},
              {"train_seconds": timings})
    return rec
