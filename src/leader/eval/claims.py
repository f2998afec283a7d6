"""``leader eval claims``: every claim of the paper, measured, with its floor and statistics.

One command trains (or reuses) the teachers and students it needs and measures each claim of
the paper as one row: the claim, the paper's figure or table, the metric, our value (mean ± sd
over seeds), the target, whether it holds, the p-value against its comparison, and the value
of a **random-initialised network of the same architecture** (the floor). Evaluation is always
on a patient-level test split that no teacher and no student saw; models are chosen on nothing
(fixed recipes) and probes choose their regularisation on the validation split.

Settings:

* ``controlled`` — :mod:`leader.eval.world`: chest phantoms whose disease expert knows lesions
  and not position, and whose anatomy expert knows position and not lesions, by construction.
  Every claim must hold here; one that does not points at a bug in the distillation.
* ``real`` — real radiographs (``../shared/data/real-cxr-large`` by default: NIH ChestX-ray14
  + the COVID-19 image data collection; see :func:`leader.eval.claims_real.prepare_real`),
  with experts fitted on the training split only.

Tasks (each representation, test split):

============  ==================================================================================
anatomy       zero-shot anatomy (Fig. 3, 8): leave-one-out kNN accuracy of the anatomical label of
              test patches (landmark identity; lung zone on real data), silhouette, NMI
disease       image-level linear probe (Fig. 6): macro AUC over the disease labels, probe fitted on
              the training split, C chosen on the validation split
lesion        lesion-level linear probe (Fig. 5): one-vs-rest macro AUC of patch classes (each
              lesion kind, and healthy) — where the data have boxes
retrieval     zero-shot retrieval (Fig. 4): precision@K of diseased-patch queries against the test
              images (query's own image excluded); image-level retrieval by label where fewer
              than 30 box queries exist (each row says which)
limited       the image-level probe trained on 5 % / 10 % of the training patients (Table 3)
fidelity      distillation: R² (variance-weighted) and cosine of each head against its teacher on
              test images and patches, beside the mean-vector predictor (R² 0) and a fresh
              2-layer head fitted on the frozen trunk — trained vs random-initialised
============  ==================================================================================

Students (per seed): LeADER (joint), disease branch only, anatomy branch only, the joint
student with the cosine loss (Fig. 10), and the random-initialised student (the floor).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from leader.config import Config, as_config, with_overrides
from leader.datasets.splits import label_fraction
from leader.eval.anatomy import knn_accuracy, plot_tsne, silhouette, tsne
from leader.eval.ensembles import concat_representation
from leader.eval.features import DerivedSource, Representation, student_source
from leader.eval.linear_probe import probe_multiclass, probe_multilabel
from leader.eval.metrics import kmeans_nmi, r2_cos
from leader.eval.report import jsonable, markdown_table
from leader.eval.retrieval import disease_retrieval, l2_normalise, precision_at_k
from leader.manifest import Manifest
from leader.recipe import PatchTables, build_student, distil, patch_tables, train_split
from leader.teachers.base import Teacher
from leader.utils import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["World", "run_claims", "evaluate_representation", "fidelity", "ClaimsResult"]

#: fewer box queries than this on the test split: image-level retrieval is added (issue 15)
MIN_BOX_QUERIES = 30


@dataclass
class World:
    """Everything a setting provides to the claims runner.

    Attributes:
        setting: ``controlled`` or ``real``.
        manifest: all images, ``split`` in train / val / test (patient level).
        cfg: the training config of the students (teachers' roles in ``cfg.teachers``).
        teachers: the frozen experts used for training, by name (roles in ``cfg.teachers``).
        teacher_reps: how each expert is evaluated (its embedding of images and patches).
        train_tables: patch tables of the training split (stage-2 pairs).
        anatomy_patches: patch table with ``label`` (anatomical class) and ``split``.
        lesion_patches: patch table of diseased (label = lesion kind) and healthy patches with
            ``split``; may be empty.
        disease_labels: image-level labels evaluated (``label:<Name>`` columns).
        description: what the data are (one sentence for the report).
        teacher_reports: the experts' own held-out numbers (from their fit reports).
        anatomy_task: what the anatomical label is (``landmark identity``, ``lung zone``).
        retrieval_k: K of precision@K.
        entangled_labels: ``(names, float32 [N, K])`` image labels that need anatomy and disease
            together (e.g. which side a lesion is on), or ``None``.
        entangled_task: what they are, for the report.
    """

    setting: str
    manifest: Manifest
    cfg: Config
    teachers: dict[str, Teacher]
    teacher_reps: dict[str, Representation]
    train_tables: PatchTables
    anatomy_patches: pd.DataFrame
    lesion_patches: pd.DataFrame
    disease_labels: list[str]
    description: str
    teacher_reports: dict = field(default_factory=dict)
    anatomy_task: str = "landmark identity"
    retrieval_k: int = 10
    entangled_labels: tuple | None = None
    entangled_task: str = ""


# ---------------------------------------------------------------------------------------------
# per-representation evaluation
# ---------------------------------------------------------------------------------------------
def _patch_split(manifest: Manifest, patches: pd.DataFrame) -> np.ndarray:
    split_of = dict(zip(manifest.df["id"].astype(str), manifest.df["split"].astype(str)))
    return np.asarray([split_of[str(i)] for i in patches["image_id"]])


def evaluate_representation(rep: Representation, world: World, seed: int = 0,
                            fractions: Sequence[float] = (0.05, 0.1)) -> dict:
    """All task numbers of one representation on the world's test split.

    Returns:
        ``{"anatomy_knn", "anatomy_silhouette", "anatomy_nmi", "disease_auc",
        "disease_auc@<f>", "lesion_auc", "retrieval_patch", "retrieval_image", ...}``; a task the
        data cannot support is missing. Values in ``[0, 1]`` (silhouette in ``[-1, 1]``).
    """
    m = world.manifest
    split = m.df["split"].to_numpy(dtype=object).astype(str)
    out: dict = {"dim": rep.dim}
    X = rep.images(m)
    # ---- anatomy: zero-shot kNN among test patches --------------------------------------------
    ap = world.anatomy_patches
    if len(ap):
        P = rep.patches(m, ap)
        te = ap["split"].to_numpy() == "test"
        labels = ap["label"].astype(str).to_numpy()
        if te.sum() > 5:
            out["anatomy_knn"] = knn_accuracy(P[te], labels[te], k=5)
            out["anatomy_silhouette"] = silhouette(P[te], labels[te])
            out["anatomy_nmi"] = kmeans_nmi(P[te], labels[te], seed=seed)
            out["anatomy_chance"] = float(pd.Series(labels[te]).value_counts(normalize=True).max())
    # ---- disease: image-level linear probe ---------------------------------------------------
    Y = m.labels_array(world.disease_labels)
    res = probe_multilabel(X, Y, world.disease_labels, split, seed=seed, context=f"{rep.name}: disease probe")
    out["disease_auc"] = res.macro_auc
    out["disease_auc_per_label"] = {k: float(v) for k, v in res.auc.per_class.items()}
    for f in fractions:
        idx = np.flatnonzero(label_fraction(m, f, seed=seed))
        if len(idx) >= 4:
            r = probe_multilabel(X, Y, world.disease_labels, split, train_index=idx, seed=seed,
                                 context=f"{rep.name}: disease probe at {f:.0%}")
            out[f"disease_auc@{f:g}"] = r.macro_auc
    # ---- lesion level ---------------------------------------------------------------------------
    lp = world.lesion_patches
    if len(lp):
        L = rep.patches(m, lp)
        lab = np.where(lp["kind"].to_numpy() == "healthy", "healthy", lp["label"].astype(str).to_numpy())
        ls = lp["split"].to_numpy()
        if (ls == "test").sum() and len(set(lab[ls == "test"])) > 1:
            r = probe_multiclass(L, lab, ls, seed=seed, context=f"{rep.name}: lesion probe")
            out["lesion_auc"] = r.auc.macro
        # ---- retrieval: diseased patches of test images query the test images -------------------
        te_img = split == "test"
        q = lp[(lp["kind"] == "disease").to_numpy() & (ls == "test")]
        gallery_ids = m.df["id"].astype(str).to_numpy()[te_img]
        cols = {n: v[te_img] for n, v in m.labels_by_name().items()}
        k = min(world.retrieval_k, int(te_img.sum()) - 1)
        if len(q) and k >= 1:
            qe = rep.patches(m, q.reset_index(drop=True))
            try:
                r = disease_retrieval(qe, list(q["label"]), list(q["image_id"]), X[te_img], list(gallery_ids),
                                      cols, k=k, seed=seed)
                out["retrieval_patch"] = r.mean
                out["retrieval_patch_chance"] = r.chance
                out["retrieval_patch_queries"] = r.n_queries
            except ValueError as e:
                log.info("%s: patch retrieval: %s", rep.name, e)
    if world.entangled_labels is not None:
        names, Ye = world.entangled_labels
        r = probe_multilabel(X, Ye, names, split, seed=seed, context=f"{rep.name}: entangled probe")
        out["entangled_auc"] = r.macro_auc
    img_ret = image_retrieval(X, m, world.disease_labels, k=world.retrieval_k)
    if img_ret is not None:
        out["retrieval_image"], out["retrieval_image_chance"], out["retrieval_image_queries"] = img_ret
    return out


def image_retrieval(X: np.ndarray, m: Manifest, labels: Sequence[str], k: int) -> tuple[float, float, int] | None:
    """Image-level retrieval by label on the test split: every test image positive for a label
    queries the other test images whose label is known; precision@K of images sharing it.

    Returns ``(mean precision@K over queries, chance = mean prevalence seen by the queries,
    number of queries)``, or ``None`` without queries.
    """
    split = m.df["split"].astype(str).to_numpy()
    te = np.flatnonzero(split == "test")
    Y = m.labels_array(list(labels))[te]
    G = X[te]
    precs, chances = [], []
    for j in range(Y.shape[1]):
        known = ~np.isnan(Y[:, j])
        pos = np.flatnonzero(known & (Y[:, j] == 1))
        kk = min(k, int(known.sum()) - 1)
        if kk < 1:
            continue
        gal = np.flatnonzero(known)
        rel = Y[gal, j] == 1
        for i in pos:
            where = int(np.flatnonzero(gal == i)[0])
            precs.append(precision_at_k(G[i], G[gal], rel, kk, exclude=where))
            chances.append(float((rel.sum() - 1) / max(len(gal) - 1, 1)))
    if not precs:
        return None
    return float(np.mean(precs)), float(np.mean(chances)), len(precs)


# ---------------------------------------------------------------------------------------------
# distillation fidelity
# ---------------------------------------------------------------------------------------------
def fresh_head_r2(trunk_train: np.ndarray, target_train: np.ndarray, trunk_test: np.ndarray,
                  target_test: np.ndarray, seed: int = 0) -> float:
    """R² on the test rows of a fresh 2-layer MLP head (scikit-learn, early stopping on 10 % of
    the training rows) fitted on frozen trunk features → teacher embeddings: how much of the
    teacher the trunk carries, whatever the trained head learnt."""
    from sklearn.neural_network import MLPRegressor
    from sklearn.preprocessing import StandardScaler

    sx = StandardScaler().fit(trunk_train)
    ty = StandardScaler().fit(target_train)
    head = MLPRegressor(hidden_layer_sizes=(256,), alpha=1e-3, learning_rate_init=1e-3, max_iter=400,
                        early_stopping=True, validation_fraction=0.15, n_iter_no_change=20, random_state=seed)
    head.fit(sx.transform(trunk_train), ty.transform(target_train))
    pred = ty.inverse_transform(head.predict(sx.transform(trunk_test)))
    return r2_cos(pred, target_test)[0]


def fidelity(student: Representation, trunk: Representation, random_trunk: Representation,
             teacher: Representation, world: World, seed: int = 0) -> dict:
    """Distillation fidelity of one head (``student``) against its teacher on test data.

    Test images and the diseased and healthy patches of test images (the kinds of samples
    Algorithm 1 distils on) are pooled. Returns ``{"r2", "cos", "r2_fresh_trained",
    "r2_fresh_random", "n_test", "erank_trained", "erank_random"}`` (``erank``: effective rank
    of the trunk's test features, :func:`effective_rank` — a collapsed trunk has about 1).
    """
    m = world.manifest
    split = m.df["split"].astype(str).to_numpy()
    parts = [(None, split)]
    if len(world.lesion_patches):
        parts.append((world.lesion_patches, world.lesion_patches["split"].to_numpy()))

    def feats(rep: Representation) -> tuple[np.ndarray, np.ndarray]:
        xs, sp = [], []
        for table, s in parts:
            xs.append(rep.images(m) if table is None else rep.patches(m, table))
            sp.append(s)
        return np.concatenate(xs), np.concatenate(sp)

    S, sp = feats(student)
    T, _ = feats(teacher)
    tr, te = sp == "train", sp == "test"
    r2, cos = r2_cos(S[te], T[te])
    Z, _ = feats(trunk)
    Zr, _ = feats(random_trunk)
    return {"r2": r2, "cos": cos, "r2_fresh_trained": fresh_head_r2(Z[tr], T[tr], Z[te], T[te], seed),
            "r2_fresh_random": fresh_head_r2(Zr[tr], T[tr], Zr[te], T[te], seed), "n_test": int(te.sum()),
            "erank_trained": effective_rank(Z[te]), "erank_random": effective_rank(Zr[te])}


def effective_rank(x: np.ndarray) -> float:
    """Effective rank ``exp(H(p))`` of centred features ``[N, D]``, ``p`` the normalised singular
    values (Roy & Vetterli 2007): 1 when every row varies along one direction, ``D`` when all
    directions carry equal variance."""
    s = np.linalg.svd(np.asarray(x, np.float64) - np.mean(x, axis=0), compute_uv=False)
    p = s / max(s.sum(), 1e-12)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


# ---------------------------------------------------------------------------------------------
# rows and statistics
# ---------------------------------------------------------------------------------------------
def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def paired_p(values: Sequence[float], other: Sequence[float] | float, alternative: str = "greater") -> float:
    """p-value of ``values > other`` (``alternative='greater'``) or ``!=`` (``two-sided``),
    paired over seeds: a paired t-test when ``other`` varies with the seed, a one-sample t-test
    against the constant otherwise. ``nan`` with fewer than two seeds or no spread."""
    a = np.asarray(values, float)
    b = np.full_like(a, float(other)) if np.isscalar(other) else np.asarray(other, float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    d = a - b
    if len(d) < 2:
        return float("nan")
    if np.allclose(d, d[0]):  # no spread over seeds: the sign decides (a t-test is undefined)
        if d[0] == 0:
            return float("nan")
        return 0.0 if (d[0] > 0 or alternative == "two-sided") else 1.0
    return float(sps.ttest_1samp(d, 0.0, alternative=alternative).pvalue)


@dataclass
class Row:
    claim: str
    figure: str
    setting: str
    metric: str
    values: list
    target: str
    holds: bool | None
    comparison: str = ""
    comparison_values: list | float | None = None
    floor_values: list | None = None
    p_value: float = float("nan")
    note: str = ""
    kind: str = "claim"

    def as_dict(self) -> dict:
        v, sd = _mean_sd(self.values)
        cv = self.comparison_values
        c_mean = (_mean_sd(cv)[0] if isinstance(cv, list) else (float(cv) if cv is not None else float("nan")))
        f_mean = _mean_sd(self.floor_values)[0] if self.floor_values else float("nan")
        return {"claim": self.claim, "figure": self.figure, "setting": self.setting, "metric": self.metric,
                "value": v, "sd": sd, "values": [float(x) for x in self.values], "seeds": len(self.values),
                "target": self.target, "holds": self.holds, "comparison": self.comparison,
                "comparison_value": c_mean, "floor_random_init": f_mean, "p_value": self.p_value,
                "note": self.note, "kind": self.kind}


def _get(results: Mapping, name: str, key: str) -> list[float]:
    return [r[name].get(key, float("nan")) for r in results]


def _better(values: Sequence[float], other: Sequence[float] | float, p: float, alpha: float = 0.05) -> bool:
    """A "greater, p < alpha" target: the mean is above the comparison's and the one-sided p-value
    over seeds is below ``alpha`` (a higher mean alone is not enough)."""
    o = _mean_sd(other)[0] if isinstance(other, (list, tuple, np.ndarray)) else float(other)
    return bool(_mean_sd(values)[0] > o and np.isfinite(p) and p < alpha)


def build_rows(world: World, per_seed: list[dict], teacher_res: dict[str, dict], fid: list[dict],
               kinds: Mapping[str, str], levers: Sequence[str] = ()) -> list[Row]:
    """The claims as rows (see the module docstring), from the per-seed results.

    Args:
        per_seed: one ``{representation name: evaluate_representation(...)}`` per seed.
        teacher_res: ``{teacher name: evaluate_representation(...)}`` (teachers do not vary).
        fid: one ``{teacher name: fidelity(...)}`` per seed (the joint student's heads).
        kinds: ``{teacher name: kind}``.
    """
    S = world.setting
    D = next(n for n, k in kinds.items() if k == "disease")
    A = next(n for n, k in kinds.items() if k == "anatomy")
    J, RND = "LeADER E_DA", "random-init E_DA"
    rows: list[Row] = []
    ctrl = S == "controlled"

    def t(name: str, key: str) -> float:
        return float(teacher_res[name].get(key, float("nan")))

    # ---- premise: each expert strong on its own task, weak on the other's ----------------------
    a_chance = _mean_sd(_get(per_seed, J, "anatomy_chance"))[0]
    rows.append(Row("the disease expert is at chance on anatomy", "premise (§1, Fig. 3)", S,
                    "anatomy kNN accuracy", [t(D, "anatomy_knn")], f"≤ chance + 0.1 = {a_chance + 0.1:.3f}"
                    if ctrl else "reported (premise measured, not assumed)",
                    (t(D, "anatomy_knn") <= a_chance + 0.1) if ctrl else None, "chance", a_chance, kind="premise"))
    for who, key, metric, fig in ((A, "anatomy_knn", "anatomy kNN accuracy", "premise (§1, Fig. 3)"),
                                  (D, "disease_auc", "disease probe macro AUC", "premise (§1, Fig. 6)")):
        fl = _get(per_seed, RND, key)
        rows.append(Row(f"the {who} expert is strong on {key.split('_')[0]}", fig, S, metric, [t(who, key)],
                        "> random-init network", t(who, key) > _mean_sd(fl)[0], RND, fl, fl,
                        paired_p([t(who, key)] * len(per_seed), fl), kind="premise"))
    rows.append(Row("the anatomy expert is at chance on disease", "premise (§1, Fig. 6)", S,
                    "disease probe macro AUC", [t(A, "disease_auc")],
                    "≤ 0.5 + 0.1" if ctrl else "reported (premise measured, not assumed)",
                    (t(A, "disease_auc") <= 0.6) if ctrl else None, "chance", 0.5, kind="premise"))

    # ---- E_DA against each expert on the expert's own task (Fig. 3, 4, 5, 6) --------------------
    def vs_teacher(claim, fig, metric, key, teacher, factor=0.9, rep=J):
        if rep not in per_seed[0]:
            return
        vals, tv, fl = _get(per_seed, rep, key), t(teacher, key), _get(per_seed, RND, key)
        if not np.isfinite(tv) or not np.isfinite(_mean_sd(vals)[0]):
            return
        m = _mean_sd(vals)[0]
        rows.append(Row(claim, fig, S, metric, vals, f"≥ {factor:g} × {teacher} expert = {factor * tv:.3f}",
                        bool(m >= factor * tv), f"{teacher} expert", tv, fl, paired_p(vals, factor * tv),
                        note=f"p: {rep.replace('LeADER ', '')} > {factor:g} × expert over seeds; above the floor: p = "
                             f"{paired_p(vals, fl):.3g}"))

    vs_teacher("E_DA separates anatomical structures (zero-shot)", "Fig. 3", f"{world.anatomy_task}: kNN accuracy",
               "anatomy_knn", A)
    vs_teacher("E_DA keeps the disease expert's image-level disease knowledge", "Fig. 6",
               "disease probe macro AUC (100 % labels)", "disease_auc", D)
    if "lesion_auc" in teacher_res[D]:
        vs_teacher("E_DA keeps the disease expert's lesion-level knowledge", "Fig. 5", "lesion probe macro AUC",
                   "lesion_auc", D)
    n_box = teacher_res[D].get("retrieval_patch_queries", 0)
    for rep, who in ((J, "E_DA"), (f"LeADER head {D}", "E'_D (the distilled disease embedding)")):
        if n_box:
            vs_teacher(f"{who} retrieves images with the query's disease (diseased-patch queries)", "Fig. 4",
                       f"precision@{world.retrieval_k} (patch queries: {n_box})", "retrieval_patch", D, rep=rep)
        if n_box < MIN_BOX_QUERIES and "retrieval_image" in teacher_res[D]:
            vs_teacher(f"{who} retrieves images with the query's disease (image queries; < 30 box queries)",
                       "Fig. 4", f"precision@{world.retrieval_k} (image queries)", "retrieval_image", D, rep=rep)
    for f in (0.05, 0.1):
        key = f"disease_auc@{f:g}"
        if key in teacher_res[D]:
            vs_teacher(f"E_DA with {f:.0%} of the labels keeps up with the disease expert", "Table 3",
                       f"disease probe macro AUC ({f:.0%} labels)", key, D)

    # ---- every representation above the random-init floor ---------------------------------------
    for name in (J, D, A):
        for key, metric in (("anatomy_knn", "anatomy kNN accuracy"), ("disease_auc", "disease probe macro AUC")):
            vals = _get(per_seed, J, key) if name == J else [t(name, key)] * len(per_seed)
            fl = _get(per_seed, RND, key)
            if not np.isfinite(_mean_sd(vals)[0]):
                continue
            p = paired_p(vals, fl)
            rows.append(Row(f"{name if name == J else name + ' expert'} is above a random-initialised network",
                            "floor", S, metric, vals[:1] if name != J else vals, "> random-init, p < 0.05",
                            bool(np.isfinite(p) and p < 0.05), RND, fl, fl, p, kind="floor"))

    # ---- branches (Fig. 7, 8): joint vs single branch on the sum of both tasks --------------------
    def task_sum(name):
        return [a + d for a, d in zip(_get(per_seed, name, "anatomy_knn"), _get(per_seed, name, "disease_auc"))]

    joint = task_sum(J)
    for other in ("disease-branch-only E_DA", "anatomy-branch-only E_DA"):
        if other in per_seed[0]:
            o = task_sum(other)
            p = paired_p(joint, o)
            rows.append(Row(f"joint training beats the {other.split(' E_DA')[0]} student", "Fig. 7, 8", S,
                            "anatomy kNN accuracy + disease probe AUC", joint, "joint > single branch, p < 0.05",
                            _better(joint, o, p), other, o, task_sum(RND), p))
    # ---- ensembles (Fig. 9) --------------------------------------------------------------------
    ens = "teachers concatenated"
    if ens in per_seed[0]:
        width = per_seed[0][ens].get("dim")
        at = "LeADER E_DA @ensemble width" if "LeADER E_DA @ensemble width" in per_seed[0] else J
        widths = f"widths: E_DA {per_seed[0][J].get('dim')} (compared at {width} by PCA when wider), {ens} {width}"
        o = task_sum(ens)
        mine = task_sum(at)
        # perfect experts (the controlled world) make their concatenation the ceiling of the two separate tasks
        rows.append(Row(f"LeADER beats the {ens} ensemble on the two tasks", "Fig. 9", S,
                        "anatomy kNN accuracy + disease probe AUC", mine,
                        "reported: the experts are perfect by construction" if ctrl else "≥ ensemble",
                        None if ctrl else bool(_mean_sd(mine)[0] >= _mean_sd(o)[0]), ens, o, task_sum(RND),
                        paired_p(mine, o), note=widths, kind="ablation" if ctrl else "claim"))
        if "entangled_auc" in per_seed[0][ens]:
            v, oe = _get(per_seed, at, "entangled_auc"), _get(per_seed, ens, "entangled_auc")
            rows.append(Row(f"LeADER beats the {ens} ensemble where anatomy and disease are needed together",
                            "Fig. 9", S, f"{world.entangled_task}: probe macro AUC", v, "≥ ensemble",
                            bool(_mean_sd(v)[0] >= _mean_sd(oe)[0]), ens, oe, _get(per_seed, RND, "entangled_auc"),
                            paired_p(v, oe), note=widths))
    # ---- loss (Fig. 10) -------------------------------------------------------------------------
    if "LeADER cosine-loss E_DA" in per_seed[0]:
        o = task_sum("LeADER cosine-loss E_DA")
        rows.append(Row("MSE (the paper's loss) vs cosine loss", "Fig. 10", S,
                        "anatomy kNN accuracy + disease probe AUC", joint, "reported (MSE vs cosine)",
                        None, "cosine loss", o, task_sum(RND), paired_p(joint, o, "two-sided"), kind="ablation"))
    # ---- levers: a kept setting against the lever switched off; a lever not kept, switched on -----
    for lever in levers:
        key = lever_student(lever)
        if f"{key} E_DA" not in per_seed[0]:
            continue
        kept = LEVERS[lever][2]
        o = task_sum(f"{key} E_DA")
        on, off = (joint, o) if kept else (o, joint)
        r2 = {n: (_mean_sd([f[n]["r2"] for f in fid])[0], _mean_sd([f[key][n]["r2"] for f in fid if key in f])[0])
              for n in kinds}
        r2_on_off = {n: (a, b) if kept else (b, a) for n, (a, b) in r2.items()}
        rows.append(Row(f"lever: {LEVERS[lever][0]}", "levers (issue 15)", S, "anatomy kNN accuracy + disease probe AUC",
                        on, "kept (in the preset)" if kept else "tried (not in the preset)",
                        bool(_mean_sd(on)[0] > _mean_sd(off)[0]), "lever off", off, task_sum(RND),
                        paired_p(on, off, "two-sided"), kind="lever",
                        note="lever on vs off; distillation R² on / off: " + "; ".join(
                            f"{n} {a:.3f} / {b:.3f}" for n, (a, b) in r2_on_off.items())))
    # ---- fidelity ---------------------------------------------------------------------------------
    for name in kinds:
        r2 = [f[name]["r2"] for f in fid]
        fr = [f[name]["r2_fresh_random"] for f in fid]
        ft = [f[name]["r2_fresh_trained"] for f in fid]
        rows.append(Row(f"the student's {name} head reproduces its teacher on unseen images and patches",
                        "distillation (§3)", S, "R² of the head vs the teacher (test)", r2,
                        "≥ 0.5 (mean-vector predictor: 0)", bool(_mean_sd(r2)[0] >= 0.5), "mean-vector predictor", 0.0,
                        fr, paired_p(r2, 0.5), note=f"cosine {_mean_sd([f[name]['cos'] for f in fid])[0]:.3f}",
                        kind="fidelity"))
        rows.append(Row(f"the trained trunk carries more of the {name} teacher than a random trunk",
                        "distillation (§3)", S, "R² of a fresh 2-layer head on the frozen trunk (test)", ft,
                        "trained > random trunk, p < 0.05", _better(ft, fr, paired_p(ft, fr)), "random trunk", fr,
                        fr, paired_p(ft, fr), kind="fidelity"))
    return rows


# ---------------------------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------------------------
@dataclass
class ClaimsResult:
    """What :func:`run_claims` measured: the rows and every number behind them."""

    rows: list[dict]
    per_seed: list[dict]
    teachers: dict
    fidelity: list[dict]
    seconds: dict
    levers: list = field(default_factory=list)


def rebuild_report(out: str | Path) -> ClaimsResult:
    """Re-derive the rows and ``claims.json`` / ``claims.md`` from ``OUT/results.json`` (no
    training, no evaluation): after a change to how rows are built or reported.

    Raises:
        FileNotFoundError: no ``results.json`` in ``out``.
    """
    from types import SimpleNamespace

    out = Path(out)
    res = json.loads((out / "results.json").read_text())
    cfg = as_config(res["config"])
    world = SimpleNamespace(setting=res["setting"], description=res["data"], cfg=cfg,
                            teacher_reports=res.get("teacher_reports", {}),
                            anatomy_task=res.get("anatomy_task", "lung zone" if res["setting"] == "real"
                                                 else "landmark identity"),
                            retrieval_k=int(res.get("retrieval_k", cfg.eval.retrieval_k)),
                            entangled_task=res.get("entangled_task", ""))
    kinds = {n: t.kind for n, t in cfg.teachers.items() if n in res["teachers"]}
    levers = res.get("levers", [])
    rows = [r.as_dict() for r in build_rows(world, res["per_seed"], res["teachers"], res["fidelity"], kinds,
                                            levers=levers)]
    result = ClaimsResult(rows, res["per_seed"], res["teachers"], res["fidelity"], res["seconds"], levers)
    write_report(world, result, out, res["seeds"])
    return result


def _pca_to(rep: Representation, width: int, world: World) -> Representation:
    """``rep`` reduced to ``width`` dimensions by PCA fitted on the training images."""
    from sklearn.decomposition import PCA

    m = world.manifest
    tr = m.df["split"].astype(str).to_numpy() == "train"
    pca = PCA(n_components=width, random_state=0).fit(rep.images(m)[tr])
    src = DerivedSource(f"{rep.name} @{width}", [rep], lambda xs: pca.transform(xs[0]).astype(np.float32), width)
    return Representation(src, "embedding", label=f"{rep.name} @{width}")


#: levers the runner can try, one more joint student per seed each: ``{name: (what it is, overrides,
#: kept)}``. A *kept* lever is in the claims presets; its overrides switch it **off** and the row
#: compares the kept setting with the lever off. A lever that is not kept is switched **on** by its
#: overrides and the row compares it with the kept setting (would it help?)
LEVERS = {
    "target-norm": ("normalised teacher targets (teachers.<name>.target_norm), vs raw targets",
                    lambda cfg: {"teachers": {n: {"target_norm": "none"} for n in cfg.teachers}}, True),
    "context": ("context patches of every training image (patches.context_per_image), vs the paper's pairs only",
                lambda cfg: {"patches": {"context_per_image": 0}}, True),
    "long-stage2": ("a 3x longer stage 2 (stage2.epochs), vs the preset's schedule",
                    lambda cfg: {"stage2": {"epochs": 3 * int(cfg.stage2.epochs)}}, False),
    "smooth-l1": ("smooth-L1 distillation loss, vs the paper's MSE",
                  lambda cfg: {"loss": "smooth_l1"}, False),
}


def lever_student(lever: str) -> str:
    """Name of the extra student of ``lever`` (``lever-off X`` for a kept lever, ``lever-on X`` otherwise)."""
    return f"lever-{'off' if LEVERS[lever][2] else 'on'} {lever}"


def train_tables_for(world: World, cfg: Config) -> PatchTables:
    """The stage-2 patch tables of a student trained with ``cfg``: the world's own when
    ``cfg.patches`` equals the world's; without the context patches when only
    ``context_per_image`` was switched off (the ``context`` lever); otherwise rebuilt from the
    training split with ``cfg.patches``."""
    mine, theirs = cfg.patches.to_dict(), world.cfg.patches.to_dict()
    if mine == theirs:
        return world.train_tables
    if {k for k in mine if mine[k] != theirs.get(k)} == {"context_per_image"} and not mine["context_per_image"]:
        return replace(world.train_tables, context=None)
    return patch_tables(cfg, train_split(world.manifest), landmarks=False)


def run_claims(world: World, out: str | Path, seeds: Sequence[int] = (0, 1, 2), say: Callable[[str], None] = print,
               variants: bool = True, levers: Sequence[str] = ()) -> ClaimsResult:
    """Train (or reuse) the students of every seed, evaluate everything, write the report.

    Args:
        world: the setting (:func:`leader.eval.claims_controlled.prepare_controlled` or
            :func:`leader.eval.claims_real.prepare_real`).
        out: output folder: ``runs/<variant>/seed-<s>/`` (students; reused when finished),
            ``claims.json``, ``claims.md``, ``results.json`` and ``figures/``.
        seeds: training seeds (≥ 3 for the p-values to mean anything).
        variants: also train the branch-only and cosine-loss students (Fig. 7, 8, 10).
        levers: names from :data:`LEVERS`: one more joint student per seed with that lever
            switched off (a kept lever) or on (a lever the presets do not use); a row says whether
            the lever helps (issue 15: every lever tried is reported, kept or not).

    Returns:
        :class:`ClaimsResult` (also written to ``OUT``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    seconds: dict[str, float] = {}
    m = world.manifest
    kinds = {n: world.cfg.teacher(n).kind for n in world.teachers}
    D = next(n for n, k in kinds.items() if k == "disease")
    A = next(n for n, k in kinds.items() if k == "anatomy")
    say(f"evaluating the experts ({', '.join(world.teachers)}) on the test split")
    teacher_res = {n: evaluate_representation(r, world) for n, r in world.teacher_reps.items()}
    concat = concat_representation([world.teacher_reps[D], world.teacher_reps[A]], "teachers concatenated")
    teacher_res["teachers concatenated"] = evaluate_representation(concat, world)
    seconds["teachers_eval"] = time.time() - t0
    per_seed, fids = [], []
    student_specs = [("LeADER", {}, list(world.teachers))]
    for lever in levers:
        if lever not in LEVERS:
            raise ValueError(f"unknown lever {lever!r}; known: {sorted(LEVERS)}")
        student_specs.append((lever_student(lever), LEVERS[lever][1](world.cfg), list(world.teachers)))
    if variants:
        student_specs += [("disease-branch-only", {}, [D]), ("anatomy-branch-only", {}, [A]),
                          ("LeADER cosine-loss", {"loss": "cosine"}, list(world.teachers))]
    for seed in seeds:
        res: dict[str, dict] = {}
        t = time.time()
        trained = {}
        for name, over, names in student_specs:
            cfg = with_overrides(world.cfg, {**over, "seed": int(seed)})
            if name.startswith("lever-") and cfg.to_dict() == with_overrides(world.cfg, {"seed": int(seed)}).to_dict():
                say(f"seed {seed}: {name}: this config already has it that way; nothing to compare")
            run = out / "runs" / name.replace(" ", "-").lower() / f"seed-{seed}"
            say(f"seed {seed}: student {name} ({', '.join(names)})" +
                (" [reused]" if (run / "final" / "model.safetensors").is_file() else ""))
            trained[name] = distil(cfg, {n: world.teachers[n] for n in names}, run, manifest=m,
                                   tables=train_tables_for(world, cfg), reuse=True, say=lambda s: log.info(s))
        seconds[f"train_seed{seed}"] = time.time() - t
        t = time.time()
        rnd_model = build_student(with_overrides(world.cfg, {"seed": int(seed)}), world.teachers)
        rnd = student_source(rnd_model, name="random-init")
        reps = {"random-init E_DA": Representation(rnd, "e_da")}
        joint_src = student_source(trained["LeADER"], name="LeADER")
        reps["LeADER E_DA"] = Representation(joint_src, "e_da")
        for n in world.teachers:
            reps[f"LeADER head {n}"] = Representation(joint_src, n)
        for name, _, _ in student_specs[1:]:
            src = student_source(trained[name], name=name)
            reps[f"{name} E_DA"] = Representation(src, "e_da")
            if name.startswith("lever-"):
                for n in world.teachers:
                    reps[f"{name} head {n}"] = Representation(src, n)
        width = concat.dim
        if reps["LeADER E_DA"].dim > width:
            reps["LeADER E_DA @ensemble width"] = _pca_to(reps["LeADER E_DA"], width, world)
        for label, rep in reps.items():
            res[label] = evaluate_representation(rep, world, seed=seed)
        res["teachers concatenated"] = teacher_res["teachers concatenated"]
        per_seed.append(res)
        say(f"seed {seed}: " + ", ".join(f"{k}: anatomy {v.get('anatomy_knn', float('nan')):.3f} / disease "
                                         f"{v.get('disease_auc', float('nan')):.3f}" for k, v in res.items()
                                         if k in ("LeADER E_DA", "random-init E_DA")))
        fids.append({n: fidelity(reps[f"LeADER head {n}"], reps["LeADER E_DA"], reps["random-init E_DA"],
                                 world.teacher_reps[n], world, seed=seed) for n in world.teachers})
        for lever in levers:
            key = lever_student(lever)
            fids[-1][key] = {n: fidelity(reps[f"{key} head {n}"], reps[f"{key} E_DA"], reps["random-init E_DA"],
                                         world.teacher_reps[n], world, seed=seed) for n in world.teachers}
        seconds[f"eval_seed{seed}"] = time.time() - t
    rows = [r.as_dict() for r in build_rows(world, per_seed, teacher_res, fids, kinds, levers=levers)]
    seconds["total"] = time.time() - t0
    result = ClaimsResult(rows, per_seed, teacher_res, fids, seconds, list(levers))
    _figures(world, per_seed, teacher_res, out, reps, say)
    write_report(world, result, out, list(seeds))
    return result


def _figures(world: World, per_seed, teacher_res, out: Path, reps, say) -> None:
    """t-SNE of the test anatomy patches (E_DA of the last seed, both experts) and a bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    ap = world.anatomy_patches
    te = ap[ap["split"] == "test"].reset_index(drop=True)
    if len(te) > 10:
        items = [("LeADER E_DA", reps["LeADER E_DA"]), ("random-init E_DA", reps["random-init E_DA"])] + [
            (f"{n} expert", r) for n, r in world.teacher_reps.items()]
        for label, rep in items:
            emb = rep.patches(world.manifest, te)
            coords, settings = tsne(emb, seed=0, perplexity=min(30.0, max(5.0, len(te) / 10)))
            plot_tsne(coords, list(te["label"].astype(str)), figs / f"tsne-{label.replace(' ', '_')}.png",
                      f"{world.setting}: {world.anatomy_task} of test patches — {label}", settings)
    names = ["random-init E_DA", "LeADER E_DA"] + [n for n in ("disease-branch-only E_DA", "anatomy-branch-only E_DA")
                                                   if n in per_seed[0]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=110)
    for ax, key, title in ((axes[0], "anatomy_knn", f"anatomy: {world.anatomy_task} kNN acc."),
                           (axes[1], "disease_auc", "disease: image probe macro AUC")):
        labels, means, sds = [], [], []
        for n in names:
            v = _get(per_seed, n, key)
            mu, sd = _mean_sd(v)
            labels.append(n.replace(" E_DA", ""))
            means.append(mu)
            sds.append(0.0 if not np.isfinite(sd) else sd)
        for n, r in teacher_res.items():
            labels.append(n if n == "teachers concatenated" else f"{n} expert")
            means.append(r.get(key, float("nan")))
            sds.append(0.0)
        ax.bar(range(len(labels)), means, yerr=sds, color=["0.6", "tab:blue", "tab:cyan", "tab:olive"][:len(names)] +
               ["tab:red", "tab:green", "tab:purple"][:len(teacher_res)], capsize=3)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"claims, {world.setting} setting: test split, mean ± sd over seeds (grey: random-init floor)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(figs / "claims.png")
    plt.close(fig)


def _fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def write_report(world: World, result: ClaimsResult, out: Path, seeds: list[int], command: str = "") -> None:
    """``claims.json`` (the rows), ``results.json`` (every number) and ``claims.md``."""
    atomic_write_text(out / "claims.json", json.dumps(jsonable(result.rows), indent=2))
    atomic_write_text(out / "results.json", json.dumps(jsonable({
        "setting": world.setting, "data": world.description, "seeds": seeds, "per_seed": result.per_seed,
        "teachers": result.teachers, "fidelity": result.fidelity, "seconds": result.seconds,
        "teacher_reports": world.teacher_reports, "config": world.cfg.to_dict(), "anatomy_task": world.anatomy_task,
        "retrieval_k": world.retrieval_k, "entangled_task": world.entangled_task, "levers": list(result.levers)}),
        indent=2))
    df = pd.DataFrame(result.rows)
    df["value ± sd"] = [f"{_fmt(v)} ± {_fmt(s)}" for v, s in zip(df["value"], df["sd"])]
    df["holds"] = df["holds"].map(lambda h: "—" if h is None else ("yes" if h else "**no**"))
    df["p"] = df["p_value"].map(lambda p: "n/a" if not np.isfinite(p) else f"{p:.3g}")
    cols = ["claim", "figure", "metric", "value ± sd", "target", "holds", "comparison", "comparison_value",
            "floor_random_init", "p", "note"]
    lines = [f"# Claims — {world.setting} setting", "",
             f"Data: {world.description}", "",
             f"Seeds: {seeds}. Everything is measured on the patient-level **test** split that no expert and no "
             "student saw; probes choose C on the validation split. *floor* is a random-initialised student of "
             "the same architecture (same seeds). p-values: one-sided t-test over seeds against the comparison "
             "(paired where the comparison varies with the seed).", "",
             f"Time: {result.seconds.get('total', float('nan')) / 60:.1f} min.", ""]
    for kind, title in (("premise", "The premise: each expert strong on its own task"),
                        ("claim", "The paper's claims"), ("fidelity", "Distillation fidelity"),
                        ("floor", "Against the random-initialised floor"), ("ablation", "Ablations reported"),
                        ("lever", "Levers tried (lever on vs off; holds: the lever helps)")):
        part = df[df["kind"] == kind]
        if len(part):
            lines += [f"## {title}", "", markdown_table(part, cols), ""]
    if world.teacher_reports:
        lines += ["## The experts' own held-out (validation) numbers", "", "```json",
                  json.dumps(jsonable(world.teacher_reports), indent=2)[:4000], "```", ""]
    lines += ["## Figures", "", "![claims](figures/claims.png)", ""]
    for png in sorted((out / "figures").glob("tsne-*.png")):
        lines.append(f"![{png.stem}](figures/{png.name})")
    atomic_write_text(out / "claims.md", "\n".join(lines) + "\n")
