"""``leader demo``: LeADER end to end on real radiographs (or phantoms) in one command.

Steps, each skipped when its output already exists (so an interrupted demo resumes):

1. index the data into a manifest (``--data-root``), or generate chest phantoms;
2. cut patches (Algorithm 1 lines 1-7): diseased patches around boxes, healthy patches from
   normal images, and landmark patches for the anatomy check;
3. fit the two experts (``leader teachers fit``): a supervised disease expert and a
   label-free anatomy expert;
4. distil them into the student: stage 1 (disease branch, whole images), stage 2 (both
   branches, image/patch pairs);
5. embed images and patches with the student (``E_DA``, ``E'_D``, ``E'_A``) and the teachers;
6. zero-shot checks: disease retrieval (precision@K, query's own image excluded) and anatomy
   (kNN accuracy of landmark identity, silhouette, t-SNE), for the student and the teachers
   side by side;
7. write ``report.md``, ``metrics.json`` and figures.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from leader.config import Config, load_config
from leader.datasets.pack import index_root
from leader.embed import embed_dataset, student_embed_fn, teacher_embed_fn
from leader.eval.anatomy import anatomy_metrics, plot_tsne, tsne
from leader.eval.retrieval import cosine_search, disease_retrieval
from leader.manifest import Manifest
from leader.models.student import load_model
from leader.patches import ImageDataset, PatchDataset
from leader.phantoms import make_phantom_pack
from leader.recipe import distil, fit_teacher, patch_tables, resolve_teachers, train_split
from leader.train.loop import epoch_mean_losses, read_losses
from leader.utils import atomic_write_text

log = logging.getLogger(__name__)


def _say(msg: str) -> None:
    print(f"[leader demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_manifest(data_root: str | Path | None, out: Path, cfg: dict) -> tuple[Manifest, str]:
    """Index ``data_root`` (any folder :func:`leader.datasets.pack.index_root` understands) or
    generate phantoms when it is ``None``. Returns the manifest and a plain description."""
    path = out / "manifest.parquet"
    if data_root is None:
        n = int(cfg.phantoms.n_images)
        if path.exists():
            m = Manifest.load(path)
        else:
            m = make_phantom_pack(out / "phantoms", n_images=n, size=512, seed=int(cfg.seed))
            m.save(path)
        desc = (f"{len(m)} procedurally generated chest phantoms (leader.phantoms, seed "
                f"{cfg.seed}) with known lesion boxes and landmarks — NOT real radiographs")
        return m, desc

    if path.exists():
        m = Manifest.load(path)
    else:
        m = index_root(data_root, check_files=True)
        m.save(path)
    counts = m.df["dataset"].value_counts().to_dict()
    desc = f"{len(m)} real radiographs indexed from `{data_root}` (" + ", ".join(
        f"{k}: {v}" for k, v in sorted(counts.items())) + ")"
    return m, desc


def _embed_all(fn, dims, m, patches, img_size, root: Path, precision: str, desc: str) -> dict:
    """Embed images, disease patches and landmark patches into three stores under ``root``."""
    stores = {}
    stores["images"] = embed_dataset(fn, ImageDataset(m, img_size, transform=None), root / "images", dims,
                                     precision=precision, desc=f"{desc}: images")
    for kind in ("disease", "landmark"):
        if len(patches.get(kind, ())):
            stores[kind] = embed_dataset(fn, PatchDataset(m, patches[kind], img_size, transform=None),
                                         root / f"patches-{kind}", dims, precision=precision,
                                         desc=f"{desc}: {kind} patches")
    return stores


def _evaluate(stores: dict, key: str, m: Manifest, patches: dict, k: int, n_queries: int, seed: int,
              perplexity: float, fig_path: Path | None, title: str) -> dict:
    res: dict = {}
    img_ids, img_emb = stores["images"].load(key)
    order = {i: r for r, i in enumerate(img_ids)}
    idx = [order[i] for i in m.df["id"]]
    gallery = img_emb[idx]
    if "disease" in stores:
        dis = patches["disease"]
        q_emb = stores["disease"].get(list(dis["patch_id"]), key)
        try:
            r = disease_retrieval(q_emb, list(dis["label"]), list(dis["image_id"]), gallery, list(m.df["id"]),
                                  m.labels_by_name(), k=k, n_queries=n_queries, seed=seed)
            res["retrieval"] = r.as_dict()
            res["retrieval_per_query"] = r.per_query
        except ValueError as e:
            res["retrieval"] = {"error": str(e)}
    if "landmark" in stores:
        lm = patches["landmark"]
        emb = stores["landmark"].get(list(lm["patch_id"]), key)
        labels = list(lm["label"])
        res["anatomy"] = anatomy_metrics(emb, labels, k=5)
        if fig_path is not None:
            coords, settings = tsne(emb, seed=seed, perplexity=perplexity)
            plot_tsne(coords, labels, fig_path, title, settings)
            res["anatomy"]["tsne_png"] = fig_path.name
            res["anatomy"]["tsne_settings"] = settings
    return res


def _plot_losses(loss_csv: Path, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = read_losses(loss_csv)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    for ax, stage in zip(axes, (1, 2)):
        sr = [r for r in rows if int(r["stage"]) == stage]
        if not sr:
            continue
        steps = [r["step"] for r in sr]
        ax.plot(steps, [r["loss"] for r in sr], lw=0.8, label="total")
        parts = [k for k in sr[0] if k.startswith("loss_") and not np.isnan(sr[0][k])]
        for key in parts if len(parts) > 1 else []:  # one part alone is the total
            ax.plot(steps, [r[key] for r in sr], lw=0.6, alpha=0.7, label=key[5:])
        ax.set_title(f"stage {stage}: " + ("disease branch, images" if stage == 1 else "both branches, image/patch pairs"),
                     fontsize=9)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _retrieval_figure(m: Manifest, patches: pd.DataFrame, per_query: list, stores: dict, key: str,
                      path: Path, k_show: int = 8) -> None:
    """Paper Fig. 4 style: one query patch and its top images, green = correct, red = wrong."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    done = [q for q in per_query if "precision" in q]
    if not done:
        return
    q = max(done, key=lambda r: (r["precision"], -r["query"]))
    prow = patches.iloc[q["query"]]
    lab = prow["label"]
    col = m.labels_by_name()[lab]
    known = np.flatnonzero(~np.isnan(col))
    known = np.array([i for i in known if m.df["id"].iloc[i] != prow["image_id"]])
    img_ids, img_emb = stores["images"].load(key)
    order = {i: r for r, i in enumerate(img_ids)}
    g = img_emb[[order[m.df["id"].iloc[i]] for i in known]]
    qe = stores["disease"].get([prow["patch_id"]], key)
    _, top = cosine_search(qe, g, min(k_show, len(known)))
    pds = PatchDataset(m, patches.iloc[[q["query"]]].reset_index(drop=True), 224, transform=None)
    ids = ImageDataset(m, 224, transform=None)
    fig, axes = plt.subplots(1, 1 + top.shape[1], figsize=(2.0 * (1 + top.shape[1]), 2.4), dpi=100)
    axes[0].imshow(pds[0]["image"][0].numpy(), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title(f"query: {lab}", fontsize=8)
    for ax, j in zip(axes[1:], top[0]):
        gi = int(known[j])
        ax.imshow(ids[gi]["image"][0].numpy(), cmap="gray", vmin=0, vmax=1)
        ok = col[gi] == 1
        for s in ax.spines.values():
            s.set_edgecolor("tab:green" if ok else "tab:red")
            s.set_linewidth(4)
        ax.set_title(str(m.df["id"].iloc[gi]).split("/")[-1][:16], fontsize=6)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"zero-shot disease retrieval ({key}): query cut from {prow['image_id']}, its top "
                 f"{top.shape[1]} images (query's own image excluded); green = image has {lab}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def head_label(name: str, kind: str) -> str:
    """How a head is named in reports: ``E'_D`` / ``E'_A`` for the paper's two kinds, ``E'[name]`` otherwise."""
    sym = {"disease": "E'_D", "anatomy": "E'_A"}.get(kind, f"E'[{name}]")
    return f"student {sym} ({name} head)"


def run_demo(data_root: str | Path | None, out_dir: str | Path, quick: bool = False,
             overrides: Sequence[str] = (), config: str | None = None, cfg: Config | None = None) -> dict:
    """Run the whole demo; returns the metrics dict also written to ``OUT/metrics.json``.

    Every configured teacher of kind ``disease`` or ``anatomy`` (``cfg.teachers``) is fitted
    with the recipe of its kind (``cfg.fit``), or taken from its ``source`` when one is set;
    the student distils all of them (:func:`leader.recipe.distil`). Steps whose outputs exist
    are reused, and the report says which.
    """
    t_start, cpu_start = time.time(), time.process_time()
    load_start = round(os.getloadavg()[0], 2)
    out = Path(out_dir)
    cfg = cfg if cfg is not None else load_config(config or ("demo-quick" if quick else "demo"), overrides)
    out.mkdir(parents=True, exist_ok=True)
    seed = int(cfg.seed)
    torch.manual_seed(seed)
    precision = cfg.precision
    timings: dict[str, float] = {}
    reused: list[str] = []

    t = time.time()
    if (out / "manifest.parquet").exists():
        reused.append("manifest")
    _say("1/6 indexing data" if data_root else "1/6 generating chest phantoms (no --data-root)")
    m, data_desc = build_manifest(data_root, out, cfg)
    train = train_split(m)
    patches = patch_tables(cfg, train)
    patches.save(out)
    timings["data"] = time.time() - t
    _say(f"   {data_desc}; {len(patches.disease)} diseased, {len(patches.healthy)} healthy, "
         f"{len(patches.landmark)} landmark patches")

    t = time.time()
    tdir = out / "teachers"
    sources: dict[str, str] = {}
    for name, tc in cfg.teachers.items():
        if tc.source is not None:
            sources[name] = tc.source
            continue
        if tc.kind not in ("disease", "anatomy"):
            _say(f"2/6 teacher {name!r} ({tc.kind}) has no source and no fitting recipe: left out")
            continue
        folder = tdir / name
        if (folder / "teacher.json").exists():
            reused.append(f"teacher {name}")
        else:
            _say(f"2/6 fitting the {name} expert ("
                 + ("supervised on disease labels" if tc.kind == "disease" else "label-free: where in the chest is this view")
                 + ")")
            fit_teacher(cfg, tc.kind, train, folder)
        sources[name] = str(folder)
    teachers = resolve_teachers(cfg, sources)
    timings["teachers"] = time.time() - t

    t = time.time()
    sc = cfg.student
    S = int(sc.img_size)
    sdir = out / "student"
    if (sdir / "final" / "model.safetensors").exists():
        reused.append("student")
    else:
        _say(f"3/6 distilling into the student ({sc.backbone} {sc.backbone_kwargs or ''})")
    distil(cfg, teachers, sdir, manifest=m, tables=patches, reuse=True, say=lambda s: _say("   " + s))
    student = load_model(sdir / "final")
    timings["distillation"] = time.time() - t

    t = time.time()
    _say("4/6 embedding images and patches (student and teachers)")
    dims = {"e_da": student.e_da_dim, **{h: teachers[h].dim for h in teachers}}
    tables = {"disease": patches.disease, "landmark": patches.landmark}
    st_stores = _embed_all(student_embed_fn(student), dims, m, tables, S, out / "embeddings" / "student",
                           precision, "student")
    te_stores = {name: _embed_all(teacher_embed_fn(tt), {"embedding": tt.dim}, m, tables, S,
                                  out / "embeddings" / f"teacher-{name}", precision, f"teacher {name}")
                 for name, tt in teachers.items()}
    timings["embedding"] = time.time() - t

    t = time.time()
    _say("5/6 zero-shot disease retrieval and anatomy checks")
    ev = cfg.eval
    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    results = {}
    kinds = {n: cfg.teacher(n).kind for n in teachers}
    variants = [("student E_DA", st_stores, "e_da", "student_e_da")]
    variants += [(head_label(n, kinds[n]), st_stores, n, f"student_head_{n}") for n in teachers]
    variants += [(f"{n} teacher ({kinds[n]})", te_stores[n], "embedding", f"teacher_{n}") for n in teachers]
    for label, stores, key, slug in variants:
        results[slug] = _evaluate(stores, key, m, tables, int(ev.retrieval_k), int(ev.retrieval_queries),
                                  seed, float(ev.tsne_perplexity), figs / f"tsne-{slug}.png",
                                  f"landmark patches — {label}")
        results[slug]["name"] = label
    if "retrieval" in results["student_e_da"] and "error" not in results["student_e_da"]["retrieval"]:
        _retrieval_figure(m, patches.disease, results["student_e_da"]["retrieval_per_query"], st_stores,
                          "e_da", figs / "retrieval-student_e_da.png")
        for n in cfg.teachers_of_kind("disease", teachers):
            _retrieval_figure(m, patches.disease, results[f"teacher_{n}"]["retrieval_per_query"],
                              te_stores[n], "embedding", figs / f"retrieval-teacher_{n}.png")
    loss_rows = read_losses(sdir / "losses.csv")
    _plot_losses(sdir / "losses.csv", figs / "losses.png")
    timings["evaluation"] = time.time() - t

    s1, s2 = epoch_mean_losses(loss_rows, 1), epoch_mean_losses(loss_rows, 2)

    def _get(slug, sec, key):
        return results[slug].get(sec, {}).get(key, float("nan"))

    metrics = {
        "data": data_desc,
        "n_images": len(m),
        "n_disease_patches": int(len(patches.disease)),
        "n_healthy_patches": int(len(patches.healthy)),
        "n_landmark_patches": int(len(patches.landmark)),
        "stage1_loss_first": s1[0] if s1 else float("nan"),
        "stage1_loss_last": s1[-1] if s1 else float("nan"),
        "stage2_loss_first": s2[0] if s2 else float("nan"),
        "stage2_loss_last": s2[-1] if s2 else float("nan"),
        "retrieval_k": int(ev.retrieval_k),
        "retrieval_precision_at_k": _get("student_e_da", "retrieval", "mean"),
        "retrieval_precision_at_k_std": _get("student_e_da", "retrieval", "std"),
        "retrieval_n_queries": _get("student_e_da", "retrieval", "n_queries"),
        "retrieval_chance": _get("student_e_da", "retrieval", "chance"),
        "anatomy_knn_accuracy": _get("student_e_da", "anatomy", "knn_accuracy"),
        "anatomy_silhouette": _get("student_e_da", "anatomy", "silhouette"),
        "anatomy_chance": _get("student_e_da", "anatomy", "chance"),
        "teachers": {f"teacher_{n}": {"kind": kinds[n],
                                      "retrieval_precision_at_k": _get(f"teacher_{n}", "retrieval", "mean"),
                                      "retrieval_precision_at_k_std": _get(f"teacher_{n}", "retrieval", "std"),
                                      "anatomy_knn_accuracy": _get(f"teacher_{n}", "anatomy", "knn_accuracy"),
                                      "anatomy_silhouette": _get(f"teacher_{n}", "anatomy", "silhouette")}
                     for n in teachers},
        "student_heads": {f"student_head_{n}": {"kind": kinds[n],
                                                "retrieval_precision_at_k": _get(f"student_head_{n}", "retrieval", "mean"),
                                                "anatomy_knn_accuracy": _get(f"student_head_{n}", "anatomy", "knn_accuracy"),
                                                "anatomy_silhouette": _get(f"student_head_{n}", "anatomy", "silhouette")}
                          for n in teachers},
        "stage1_epoch_losses": s1,
        "stage2_epoch_losses": s2,
        "reused": reused,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "total_seconds": round(time.time() - t_start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
        "load_average_1min": [load_start, round(os.getloadavg()[0], 2)],
        "config": cfg.to_dict(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
    }
    _say("6/6 writing report")
    atomic_write_text(out / "metrics.json", json.dumps(_finite_json(metrics), indent=2))
    atomic_write_text(out / "details.json", json.dumps(_finite_json(results), indent=2, default=str))
    atomic_write_text(out / "report.md", render_report(metrics, results, data_root, quick, out))
    _say(f"done in {metrics['total_seconds']:.0f} s: {out / 'report.md'}"
         + (f" (reused from an earlier run: {', '.join(reused)})" if reused else ""))
    return metrics


def _finite_json(obj):
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_json(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return _finite_json(obj.item())
    return obj


def _fmt(v, pct=False) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{v:.3f}"


def render_report(metrics: dict, results: dict, data_root, quick: bool, out: Path) -> str:
    """Markdown report of one demo run: data, losses, the side-by-side table, figures."""
    cmd = "leader demo" + (f" --data-root {data_root}" if data_root else "") + f" --out {out}" + (" --quick" if quick else "")
    k = metrics["retrieval_k"]
    lines = [
        "# LeADER demo report", "",
        f"Command: `{cmd}`  ",
        f"Data: {metrics['data']}.  ",
        f"Patches: {metrics['n_disease_patches']} diseased (from boxes), {metrics['n_healthy_patches']} healthy "
        f"(from normal images), {metrics['n_landmark_patches']} around anatomical landmarks.  ",
        (f"Reused from an earlier run in this folder (not recomputed, so not in the times below): "
         f"{', '.join(metrics['reused'])}.  " if metrics.get("reused") else ""),
        f"Machine: {metrics['machine']}; total time {metrics['total_seconds']:.0f} s wall "
        f"({', '.join(f'{a} {b:.0f} s' for a, b in metrics['timings_s'].items())}), "
        f"{metrics['cpu_seconds']:.0f} s CPU; 1-min load average at start/end "
        f"{metrics['load_average_1min'][0]} / {metrics['load_average_1min'][1]} "
        "(above the core count means other work shared the CPU).", "",
        "## Distillation (Algorithm 1)", "",
        "| stage | first-epoch mean loss | last-epoch mean loss |", "|---|---|---|",
        f"| 1: disease branch on images | {_fmt(metrics['stage1_loss_first'])} | {_fmt(metrics['stage1_loss_last'])} |",
        f"| 2: both branches on image/patch pairs | {_fmt(metrics['stage2_loss_first'])} | {_fmt(metrics['stage2_loss_last'])} |",
        "", "![losses](figures/losses.png)", "",
        "## Zero-shot checks, student and teachers side by side", "",
        f"Disease retrieval: each query is a diseased patch cut from a box; all images whose label for "
        f"that disease is known are ranked by cosine similarity, the query's own image excluded; "
        f"precision@{k}, mean ± std over queries; *chance* is the fraction of relevant images.  ",
        "Anatomy: patches around named landmarks (JSRT/SCR contours or phantom landmarks); leave-one-out "
        "5-NN accuracy of landmark identity (cosine) and silhouette score.", "",
        f"| embedding | precision@{k} | chance | queries | landmark kNN acc. | silhouette |",
        "|---|---|---|---|---|---|",
    ]
    for slug, r in results.items():
        ret, ana = r.get("retrieval", {}), r.get("anatomy", {})
        p = f"{ret['mean']:.3f} ± {ret['std']:.3f}" if "mean" in ret else ret.get("error", "n/a")
        lines.append(f"| {r['name']} | {p} | {_fmt(ret.get('chance'))} | {ret.get('n_queries', 'n/a')} | "
                     f"{_fmt(ana.get('knn_accuracy'))} | {_fmt(ana.get('silhouette'))} |")
    ch = results["student_e_da"].get("anatomy", {}).get("chance")
    lines += ["", f"Landmark kNN chance level: {_fmt(ch)}.", "", "## Figures", ""]
    for slug, r in results.items():
        if "tsne_png" in r.get("anatomy", {}):
            lines.append(f"![t-SNE {r['name']}](figures/{r['anatomy']['tsne_png']})")
    for png in sorted((out / "figures").glob("retrieval-*.png")):
        lines.append(f"![{png.name}](figures/{png.name})")
    lines += ["", "t-SNE settings (openTSNE Barnes-Hut, PCA init, fixed seed, one thread) are saved next to each PNG as JSON.",
              "Numbers are as measured by this run; with this little data they show that the pipeline works "
              "on real input, not the paper's effect sizes.", ""]
    return "\n".join(lines)
