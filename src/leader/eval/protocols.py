"""The paper's evaluation protocols (§5-6), each writing Markdown + CSV + PNG to one folder.

=====================  =====================================================================
function               protocol
=====================  =====================================================================
:func:`run_anatomy`    zero-shot anatomy: landmark patches -> kNN accuracy (LOO), silhouette,
                       NMI of k-means, seeded t-SNE map per representation
:func:`run_retrieval`  zero-shot disease retrieval: diseased-patch queries, precision@K with
                       the query's own image excluded, mean ± std over seeded queries, Fig. 4
:func:`run_probe`      linear probing, image level (multi-label) or lesion level (patches),
                       label fractions × seeds, teacher ensembles, Table-2 statistics
:func:`run_finetune`   full fine-tuning: classification or UperNet segmentation (Dice, IoU),
                       label fractions × seeds, Table-2 statistics
=====================  =====================================================================

The entanglement report is :func:`leader.eval.entanglement.run_entanglement`, ablations
:func:`leader.eval.ablation.run_ablation`. Every function takes
:class:`~leader.eval.features.Representation` objects (or backbone specs for fine-tuning), a
manifest and an output folder, and returns its results as a DataFrame.
"""

from __future__ import annotations

import copy
import logging
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from leader.eval.anatomy import anatomy_metrics, plot_tsne, tsne
from leader.eval.data import eval_splits, label_fraction, labelled_columns
from leader.eval.features import Representation
from leader.eval.linear_probe import DEFAULT_CS, ProbeResult, probe_multiclass, probe_multilabel
from leader.eval.metrics import UndefinedMetricWarning, kmeans_nmi
from leader.eval.report import Report, bar_chart, image_grid
from leader.eval.retrieval import cosine_search, disease_retrieval
from leader.eval.stats import results_table, wide_table
from leader.manifest import Manifest
from leader.eval.data import find_masks
from leader.eval.ensembles import average_probe, average_scores, concat_representation
from leader.eval.finetune import finetune_classification, finetune_segmentation, load_backbone
from leader.eval.metrics import multiclass_auc, per_class_auc
from leader.patches import ImageDataset, PatchDataset

log = logging.getLogger(__name__)


def slug(name: str) -> str:
    """File-name-safe form of a representation name."""
    s = name.replace("'", "p").replace("+", "plus")
    return re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-").lower() or "rep"


def _m(manifest) -> Manifest:
    return manifest if isinstance(manifest, Manifest) else Manifest(manifest)


def _pct(f: float) -> str:
    return f"{100 * f:g}%"


# ---------------------------------------------------------------------------------------------
# 1. zero-shot anatomy
# ---------------------------------------------------------------------------------------------
def run_anatomy(reps: Sequence[Representation], manifest, landmarks: pd.DataFrame, out: str | Path, *,
                seed: int = 0, k: int = 5, perplexity: float = 30.0, source: str = "jsrt166",
                data: str = "", command: str = "") -> pd.DataFrame:
    """Zero-shot anatomy understanding (paper §5, Fig. 3).

    For each representation: embeddings of the landmark patches, leave-one-out ``k``-NN
    accuracy of landmark identity (cosine), silhouette score (cosine), NMI between k-means
    clusters (k = number of landmarks, seeded) and landmark names, and a seeded t-SNE map
    (``figures/tsne-<rep>.png`` + ``.json`` settings + ``.csv`` coordinates; identical output for
    the same seed).

    Returns:
        One row per representation.
    """
    if len(landmarks) < 3:
        raise ValueError(f"zero-shot anatomy needs landmark patches; got {len(landmarks)} (source {source})")
    rep = Report(out, "anatomy", "Zero-shot anatomy understanding")
    labels = [str(x) for x in landmarks["label"]]
    n_img = landmarks["image_id"].nunique()
    rep.text(f"Data: {data}" if data else "",
             f"Landmark patches: {len(landmarks)} from {n_img} images, {len(set(labels))} landmarks "
             f"(source: {source}).",
             f"Numbers: leave-one-out {k}-NN accuracy of landmark identity (cosine), silhouette (cosine), NMI of "
             f"k-means (k = number of landmarks, seed {seed}). t-SNE: openTSNE Barnes-Hut, PCA init, seed {seed}; "
             "settings next to each PNG.",
             f"Command: `{command}`" if command else "")
    rows, raw = [], {}
    for r in reps:
        emb = r.patches(manifest, landmarks)
        kk = max(1, min(k, len(labels) - 1))
        met = anatomy_metrics(emb, labels, k=kk)
        met["nmi"] = kmeans_nmi(emb, labels, seed=seed)
        coords, settings = tsne(emb, seed=seed, perplexity=perplexity)
        fig = rep.figures / f"tsne-{slug(r.name)}.png"
        plot_tsne(coords, labels, fig, f"landmark patches — {r.name}", settings)
        pd.DataFrame({"patch_id": landmarks["patch_id"].to_numpy(), "label": labels, "x": coords[:, 0],
                      "y": coords[:, 1]}).to_csv(fig.with_suffix(".csv"), index=False)
        rows.append({"representation": r.name, "dim": r.dim, "knn_accuracy": met["knn_accuracy"],
                     "silhouette": met["silhouette"], "nmi": met["nmi"], "chance": met["chance"], "k": kk,
                     "n_patches": met["n_patches"], "n_landmarks": met["n_landmarks"]})
        raw[r.name] = {**met, "tsne_png": str(fig.relative_to(rep.out)), "tsne_settings": settings}
    df = pd.DataFrame(rows)
    rep.table(df, "anatomy")
    for r in reps:
        rep.figure(rep.figures / f"tsne-{slug(r.name)}.png", f"t-SNE {r.name}")
    rep.write({"seed": seed, "k": k, "perplexity": perplexity, "source": source, "n_patches": len(landmarks)}, raw)
    return df


# ---------------------------------------------------------------------------------------------
# 2. zero-shot disease retrieval
# ---------------------------------------------------------------------------------------------
def retrieval_figure(m: Manifest, queries: pd.DataFrame, per_query: list, gallery: np.ndarray, q_emb: np.ndarray,
                     path: str | Path, title: str, n_show: int = 3, k_show: int = 6, size: int = 160,
                     k: int | None = None) -> Path | None:
    """Paper Fig. 4: rows of (query patch, its top ``k_show`` images); green frame = the image has
    the query's disease, red = it does not. Queries: the first evaluated query of each disease in
    the seeded sample (not the best ones), up to ``n_show``."""
    evaluated = [q for q in per_query if "precision" in q]
    done, seen = [], set()
    for q in evaluated:                      # one query per disease first, in sampled order
        if q["label"] not in seen and len(done) < n_show:
            done.append(q)
            seen.add(q["label"])
    done += [q for q in evaluated if q not in done][: n_show - len(done)]
    if not done:
        return None
    cols = m.labels_by_name()
    ids = list(m.df["id"])
    pos = {x: i for i, x in enumerate(ids)}
    imgs = ImageDataset(m.df, size, transform=None)
    panels = []
    k_show = min(k_show, len(ids) - 1)
    for q in done:
        row = queries.iloc[q["query"]]
        col = cols[row["label"]]
        known = np.flatnonzero(~np.isnan(col))
        own = pos.get(row["image_id"])
        known = known[known != own] if own is not None else known
        _, top = cosine_search(q_emb[q["query"]][None], gallery[known], min(k_show, len(known)))
        pds = PatchDataset(m.df, queries.iloc[[q["query"]]].reset_index(drop=True), size, transform=None)
        panels.append((pds.resized(0), f"query: {row['label']}\nP@{k or 'K'}={q['precision']:.2f}", None))
        for j in top[0]:
            gi = int(known[j])
            ok = col[gi] == 1
            panels.append((imgs.resized(gi), str(ids[gi]).split("/")[-1][:14], "tab:green" if ok else "tab:red"))
        panels += [(np.zeros((2, 2)), "", None)] * (k_show - len(top[0]))
    return image_grid(panels, path, title, ncols=1 + k_show)


def run_retrieval(reps: Sequence[Representation], manifest, queries: pd.DataFrame, out: str | Path, *,
                  k: int = 100, n_queries: int | None = None, seed: int = 0, figure: bool = True,
                  data: str = "", command: str = "") -> pd.DataFrame:
    """Zero-shot disease retrieval (paper §5, Fig. 4).

    Each query is a diseased patch (``queries``: a patch table cut from boxes); all images of the
    manifest whose label for the query's disease is known are ranked by cosine similarity
    (FAISS), the query's own image excluded; precision@``k`` averaged over ``n_queries``
    seeded random queries (all when ``None``), mean ± std, next to the chance level.
    """
    m = _m(manifest)
    rep = Report(out, "retrieval", "Zero-shot disease retrieval")
    labels = list(queries["label"])
    known_labels = set(m.label_names)
    rep.text(f"Data: {data}" if data else "",
             f"Queries: {len(queries)} diseased patches cut from boxes ({', '.join(sorted(set(labels)))}); "
             f"gallery: the {len(m)} images, restricted per query to those whose label for the query's disease is "
             f"known; the query's own image is excluded. precision@{k}, mean ± std over queries "
             f"({'all' if n_queries is None else n_queries} queries sampled with seed {seed}); chance = the fraction "
             "of relevant images in the galleries. Search: FAISS exact inner product on L2-normalised vectors.",
             f"Box labels without a manifest label column (not evaluable): "
             f"{sorted(set(labels) - known_labels) or 'none'}.",
             f"Command: `{command}`" if command else "")
    rows, raw = [], {}
    cols = m.labels_by_name()
    for r in reps:
        g = r.images(m)
        q = r.patches(m, queries)
        try:
            res = disease_retrieval(q, labels, list(queries["image_id"]), g, list(m.df["id"]), cols, k=k,
                                    n_queries=n_queries, seed=seed)
        except ValueError as e:
            rows.append({"representation": r.name, "k": k, "precision_at_k": np.nan, "std": np.nan,
                         "chance": np.nan, "n_queries": 0, "note": str(e)})
            raw[r.name] = {"error": str(e)}
            continue
        skipped = [x for x in res.per_query if "skipped" in x]
        rows.append({"representation": r.name, "k": k, "precision_at_k": res.mean, "std": res.std,
                     "chance": res.chance, "n_queries": res.n_queries,
                     "note": f"{len(skipped)} queries skipped" if skipped else ""})
        raw[r.name] = {**res.as_dict(), "per_query": res.per_query}
        if figure:
            path = rep.figures / f"retrieval-{slug(r.name)}.png"
            if retrieval_figure(m, queries, res.per_query, g, q, path,
                                f"zero-shot retrieval — {r.name} (green: image has the query's disease)", k=k):
                raw[r.name]["figure"] = str(path.relative_to(rep.out))
    df = pd.DataFrame(rows)
    rep.table(df, "retrieval")
    for r in reps:
        if "figure" in raw.get(r.name, {}):
            rep.figure(rep.out / raw[r.name]["figure"], f"retrieval {r.name}")
    rep.write({"k": k, "n_queries": n_queries, "seed": seed, "n_query_patches": len(queries)}, raw)
    return df


# ---------------------------------------------------------------------------------------------
# 3. linear probing
# ---------------------------------------------------------------------------------------------
def _warn_undefined(pairs: Sequence[tuple[str, str]], what: str) -> None:
    """One :class:`UndefinedMetricWarning` for a whole protocol run, naming each undefined class."""
    if not pairs:
        return
    by: dict[str, set] = {}
    for c, why in pairs:
        by.setdefault(c, set()).add(why)
    warnings.warn(f"{what}: AUC undefined for {len(by)} class(es) in some runs, left out of the macro mean: "
                  + "; ".join(f"{c} ({' / '.join(sorted(w))})" for c, w in sorted(by.items())),
                  UndefinedMetricWarning, stacklevel=3)


def _teacher_reps(reps: Sequence[Representation]) -> list[Representation]:
    return [r for r in reps if r.source.kind == "teacher"]


def run_probe(reps: Sequence[Representation], manifest, out: str | Path, *, level: str = "image",
              fractions: Sequence[float] = (1.0,), seeds: Sequence[int] = (0, 1, 2),
              split_fractions: Sequence[float] = (0.6, 0.2, 0.2), Cs: Sequence[float] = DEFAULT_CS,
              labels: Sequence[str] | None = None, patches: pd.DataFrame | None = None,
              ensembles: bool = True, min_known: int = 4, data: str = "", command: str = "") -> pd.DataFrame:
    """Linear probing on frozen embeddings with Table-2 statistics.

    Args:
        level: ``image`` (multi-label on whole images; labels with at least ``min_known`` known
            values) or ``lesion`` (multi-class on ``patches``, the disease patch table).
        fractions: training label fractions (of the training patients).
        seeds: one split (by patient, unless the manifest has an official test split) and one
            label-fraction draw per seed.
        ensembles: with two or more teacher representations add the concatenation ensemble and
            the prediction-averaging ensemble.

    Returns:
        Long records ``method, task, seed, fraction, value`` (macro AUC on test); also written:
        ``probe.csv`` (records), ``probe-table.csv`` (mean ± std, p vs best), ``probe-per-class.csv``.
    """
    m = _m(manifest)
    if level not in ("image", "lesion"):
        raise ValueError(f"level must be 'image' or 'lesion', got {level!r}")
    rep = Report(out, "probe", f"Linear probing ({level} level)")
    teachers = _teacher_reps(reps)
    all_reps = list(reps)
    if ensembles and len(teachers) >= 2:
        all_reps.append(concat_representation(teachers, "teachers concat"))
    if level == "image":
        names = list(labels) if labels is not None else labelled_columns(m, min_known=min_known)
        if not names:
            raise ValueError("no label with enough known values for an image-level probe")
        Y = m.labels_array(names)
        X = {r.name: r.images(m) for r in all_reps}
        rows_m = m
    else:
        if patches is None or len(patches) == 0:
            raise ValueError("a lesion-level probe needs disease patches (boxes)")
        names = sorted(set(map(str, patches["label"])))
        X = {r.name: r.patches(m, patches) for r in all_reps}
        pos = {x: i for i, x in enumerate(m.df["id"])}
        prow = np.array([pos[x] for x in patches["image_id"]])
        rows_m = m.df.iloc[prow].reset_index(drop=True)  # one row per patch (its image)
    records, per_class, raw = [], [], {}
    caught: list[str] = []
    for seed in seeds:
        split_img = eval_splits(m, split_fractions, seed=seed)
        split = split_img if level == "image" else split_img[prow]
        for f in fractions:
            tr_all = np.flatnonzero(split == "train")
            tr = label_fraction(tr_all, f, rows_m, seed=seed)   # by patient (lesion: the patch's image's)
            task = f"{level} macro AUC @{_pct(f)}"
            results: dict[str, ProbeResult] = {}
            for name, x in X.items():
                with warnings.catch_warnings(record=True) as w:
                    warnings.simplefilter("always", UndefinedMetricWarning)
                    try:
                        if level == "image":
                            res = probe_multilabel(x, Y, names, split, tr, Cs=Cs, seed=seed,
                                                   context=f"{name}, seed {seed}, {_pct(f)}")
                        else:
                            res = probe_multiclass(x, list(patches["label"]), split, tr, Cs=Cs, seed=seed,
                                                   context=f"{name}, seed {seed}, {_pct(f)}")
                    except ValueError as e:
                        raw[f"{name}|{seed}|{f}"] = {"error": str(e)}
                        continue
                caught += [str(x.message) for x in w]
                results[name] = res
                records.append({"method": name, "task": task, "seed": seed, "fraction": f, "value": res.macro_auc,
                                "C": res.C, "n_train": res.n_train, "n_test": res.n_test,
                                "n_undefined": len(res.auc.undefined)})
                for c, v in res.auc.per_class.items():
                    per_class.append({"method": name, "seed": seed, "fraction": f, "class": c, "auc": v,
                                      "undefined": res.auc.undefined.get(c, "")})
                raw[f"{name}|{seed}|{f}"] = res.as_dict()
            members = [results[t.name] for t in teachers if t.name in results]
            if ensembles and len(members) >= 2:
                with warnings.catch_warnings(record=True) as w:
                    warnings.simplefilter("always", UndefinedMetricWarning)
                    if level == "image":
                        avg = average_probe(members, Y[members[0].test_index])
                    else:
                        lab = np.asarray(list(map(str, patches["label"])))
                        avg = average_probe(members, lab[members[0].test_index], multiclass=True)
                caught += [str(x.message) for x in w]
                records.append({"method": "teachers average", "task": task, "seed": seed, "fraction": f,
                                "value": avg.macro_auc, "C": np.nan, "n_train": avg.n_train, "n_test": avg.n_test,
                                "n_undefined": len(avg.auc.undefined)})
    rec = pd.DataFrame(records)
    if rec.empty:
        raise ValueError("linear probe: no run could be evaluated (see the errors in probe.json)")
    _warn_undefined([(r["class"], r["undefined"]) for r in per_class if r["undefined"]], "linear probe")
    table = results_table(rec)
    rep.text(f"Data: {data}" if data else "",
             f"{'Multi-label logistic regression per disease on whole-image embeddings' if level == 'image' else 'Multinomial logistic regression on diseased-patch embeddings (one class per patch)'}; "
             f"features standardised on the training rows; C from {list(Cs)} by validation macro AUC. "
             f"Splits by patient {list(split_fractions)} (train/val/test), one per seed {list(seeds)}; label fractions "
             f"{[_pct(f) for f in fractions]} of the training patients. Cells: test macro AUC, mean ± std over seeds; "
             "bold = best; p = two-sample t-test (Student) against the best, * p < 0.05. Classes whose test rows "
             "hold one label value have no AUC: listed as undefined in probe-per-class.csv and left out of the "
             "macro mean.",
             f"Labels: {', '.join(names)}.",
             f"Command: `{command}`" if command else "")
    rep.table(wide_table(table), caption="**Macro AUC (test), mean ± std over seeds**")
    table.to_csv(rep.out / "probe-table.csv", index=False)
    rec.to_csv(rep.out / "probe.csv", index=False)
    pcd = pd.DataFrame(per_class)
    pcd.to_csv(rep.out / "probe-per-class.csv", index=False)
    if len(pcd):
        und = pcd[pcd["undefined"] != ""].groupby("class")["undefined"].first()
        if len(und):
            rep.text("Undefined per-class AUCs (excluded from the macro mean): "
                     + "; ".join(f"{c}: {v}" for c, v in und.items()) + ".")
        summ = (pcd[pcd["undefined"] == ""].groupby(["method", "class"])["auc"].mean().unstack())
        if len(summ):
            rep.table(summ.reset_index(), caption="Per-class AUC (test; mean over seeds and fractions)")
    bar_chart(table, rep.figures / "probe.png", f"linear probe ({level} level): test macro AUC", ylabel="macro AUC")
    rep.figure(rep.figures / "probe.png", "probe")
    rep.write({"level": level, "fractions": list(fractions), "seeds": list(seeds),
               "split_fractions": list(split_fractions), "Cs": list(Cs), "labels": names},
              {"runs": raw, "warnings": sorted(set(caught))})
    return rec


# ---------------------------------------------------------------------------------------------
# 4. full fine-tuning
# ---------------------------------------------------------------------------------------------
def run_finetune(backbones: Sequence[tuple[str, object]], manifest, out: str | Path, *, task: str = "classification",
                 level: str = "image", fractions: Sequence[float] = (0.05, 0.1, 1.0), seeds: Sequence[int] = (0, 1, 2),
                 epochs: int = 3, max_steps: int | None = None, lr: float = 1e-4, batch_size: int = 16,
                 split_fractions: Sequence[float] = (0.6, 0.2, 0.2), labels: Sequence[str] | None = None,
                 patches: pd.DataFrame | None = None, masks: pd.DataFrame | None = None,
                 data_root: str | Path | None = None, average_teachers: bool = True, min_known: int = 4,
                 decoder_channels: int = 64, device: str = "auto", data: str = "", command: str = "") -> pd.DataFrame:
    """Full fine-tuning with Table-2 statistics.

    Args:
        backbones: ``(name, spec)`` pairs; ``spec`` as :func:`leader.eval.finetune.load_backbone`
            (student checkpoint, teacher folder, ``timm:ARCH``, a model source). Names ending in
            ``teacher`` count as teachers for the prediction-averaging ensemble.
        task: ``classification`` (``level`` ``image``: multi-label BCE; ``lesion``: multi-class
            on ``patches``) or ``segmentation`` (UperNet; lung masks from ``masks`` or
            :func:`leader.eval.data.find_masks`).
        fractions, seeds: label fractions of the training patients × seeds.

    Returns:
        Long records ``method, task, seed, fraction, value``.
    """
    import torch  # noqa: PLC0415


    m = _m(manifest)
    if task not in ("classification", "segmentation"):
        raise ValueError(f"task must be classification or segmentation, got {task!r}")
    title = "Full fine-tuning: " + ("UperNet lung segmentation" if task == "segmentation" else f"{level}-level classification")
    rep = Report(out, "finetune", title)
    protos = {name: load_backbone(spec, name) for name, spec in backbones}
    records, raw = [], {}
    undefined: list[tuple[str, str]] = []
    names: list[str] = []
    if task == "segmentation":
        masks = masks if masks is not None else find_masks(m, data_root)
        if len(masks) < 3:
            raise ValueError(f"segmentation needs at least 3 images with masks, found {len(masks)}")
        pos = {x: i for i, x in enumerate(m.df["id"])}
        mm = m.subset(np.array([pos[x] for x in masks["image_id"]]))
    elif level == "image":
        names = list(labels) if labels is not None else labelled_columns(m, min_known=min_known)
        if not names:
            raise ValueError("no label with enough known values for image-level fine-tuning")
        # images without any known label add nothing to a masked loss: leave them out
        m = m.subset(~np.all(np.isnan(m.labels_array(names)), axis=1))
        Y = m.labels_array(names)
    else:
        if patches is None or len(patches) == 0:
            raise ValueError("lesion-level fine-tuning needs disease patches (boxes)")
        pos = {x: i for i, x in enumerate(m.df["id"])}
        prow = np.array([pos[x] for x in patches["image_id"]])
        plab = np.asarray(list(map(str, patches["label"])))
    for seed in seeds:
        if task == "segmentation":
            split = eval_splits(mm, split_fractions, seed=seed)
        else:
            split = eval_splits(m, split_fractions, seed=seed)
            if level == "lesion":
                split = split[prow]
        tr_all = np.flatnonzero(split == "train")
        for f in fractions:
            group_m = mm if task == "segmentation" else (m if level == "image" else m.df.iloc[prow].reset_index(drop=True))
            tr = label_fraction(tr_all, f, group_m, seed=seed)
            tname = (f"Dice @{_pct(f)}" if task == "segmentation" else f"{level} macro AUC @{_pct(f)}")
            scores = {}
            for name, proto in protos.items():
                bb = copy.deepcopy(proto)
                torch.manual_seed(seed)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UndefinedMetricWarning)
                    if task == "segmentation":
                        res = finetune_segmentation(bb, mm, masks, split, tr, epochs=epochs, max_steps=max_steps,
                                                    lr=lr, batch_size=min(batch_size, 8), seed=seed,
                                                    decoder_channels=decoder_channels, device=device)
                        records.append({"method": name, "task": tname, "seed": seed, "fraction": f,
                                        "value": res.metrics["dice"], "n_train": res.n_train, "n_test": res.n_test})
                        records.append({"method": name, "task": f"IoU @{_pct(f)}", "seed": seed, "fraction": f,
                                        "value": res.metrics["iou"], "n_train": res.n_train, "n_test": res.n_test})
                    elif level == "image":
                        res = finetune_classification(bb, m, split, tr, labels=names, epochs=epochs,
                                                      max_steps=max_steps, lr=lr, batch_size=batch_size, seed=seed,
                                                      device=device, context=f"{name}, seed {seed}")
                    else:
                        ds = PatchDataset(m.df, patches, bb.img_size, transform=None)
                        res = finetune_classification(bb, m, split, tr, task="multiclass", class_labels=plab,
                                                      epochs=epochs, max_steps=max_steps, lr=lr,
                                                      batch_size=batch_size, seed=seed, device=device, dataset=ds,
                                                      context=f"{name}, seed {seed}")
                if task == "classification":
                    records.append({"method": name, "task": tname, "seed": seed, "fraction": f,
                                    "value": res.metrics["macro_auc"], "n_train": res.n_train, "n_test": res.n_test})
                    undefined += list(res.metrics["undefined"].items())
                    scores[name] = res
                raw[f"{name}|{seed}|{f}"] = res.as_dict()
                log.info("fine-tune %s seed %d fraction %s: %s", name, seed, f, res.as_dict())
            members = [scores[n] for n in scores if n.endswith("teacher")]
            if task == "classification" and average_teachers and len(members) >= 2:
                s = average_scores([r.test_scores for r in members])
                te = np.flatnonzero(split == "test")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UndefinedMetricWarning)
                    auc = (per_class_auc(Y[te], s, names, warn=False) if level == "image"
                           else multiclass_auc(plab[te], s, members[0].classes, warn=False))
                records.append({"method": "teachers average", "task": tname, "seed": seed, "fraction": f,
                                "value": auc.macro, "n_train": members[0].n_train, "n_test": members[0].n_test})
    rec = pd.DataFrame(records)
    _warn_undefined(undefined, "fine-tuning")
    table = results_table(rec)
    rep.text(f"Data: {data}" if data else "",
             ("UperNet (segmentation-models-pytorch decoder and head) on the backbone's four stage outputs "
              "(Swin's channels-last maps converted to NCHW); loss BCE + Dice; Dice and IoU at threshold 0.5 on the "
              f"test images ({len(masks) if masks is not None else 0} images with lung masks in all)."
              if task == "segmentation" else
              "A new linear head on the pretrained backbone, every weight trained (AdamW, head learning rate ×10); "
              + (f"multi-label BCE with unknown labels masked ({len(m)} images with at least one known label; "
                 f"labels {', '.join(names)}); " if level == "image" else
                 f"cross-entropy over the box labels ({len(patches)} diseased patches); ")
              + "test macro AUC; classes with one label value in the test rows are undefined and left out."),
             f"Schedule: {epochs} epoch(s)" + (f", at most {max_steps} steps" if max_steps else "")
             + f", lr {lr}, batch {batch_size}; splits by patient {list(split_fractions)}, one per seed {list(seeds)}; "
             f"label fractions {[_pct(f) for f in fractions]}. Cells: mean ± std over seeds; bold = best; "
             "p = two-sample t-test against the best.",
             f"Command: `{command}`" if command else "")
    rep.table(wide_table(table), caption="**Test metrics, mean ± std over seeds**")
    table.to_csv(rep.out / "finetune-table.csv", index=False)
    rec.to_csv(rep.out / "finetune.csv", index=False)
    bar_chart(table, rep.figures / "finetune.png", title, ylabel="Dice / IoU" if task == "segmentation" else "macro AUC")
    rep.figure(rep.figures / "finetune.png", "fine-tuning")
    rep.write({"task": task, "level": level, "fractions": list(fractions), "seeds": list(seeds), "epochs": epochs,
               "max_steps": max_steps, "lr": lr, "batch_size": batch_size, "labels": names,
               "backbones": [n for n, _ in backbones]}, raw)
    return rec
