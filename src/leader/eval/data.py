"""Evaluation data: manifests, splits, label fractions, landmark tables and segmentation masks.

* :func:`load_eval_manifest`: a manifest from a file, a data root (indexed with
  :func:`leader.datasets.pack.index_root`) or generated phantoms.
* :func:`eval_splits`: train / val / test per row. The manifest's own ``split`` column is used
  when it has a ``test`` split; otherwise a seeded split *by patient* (no patient in two
  splits), e.g. 60 / 20 / 20 %.
* :func:`label_fraction`: a seeded subset of the training rows (5 %, 10 %, 100 %), grouped by
  patient.
* Landmark sources (zero-shot anatomy): :func:`landmark_table` builds a patch table of
  ``kind='landmark'`` rows from JSRT/SCR ``jsrt166`` contours grouped into the ten named
  landmarks (:func:`leader.patches.landmark_patches`) or into organs (points sampled along each
  contour), from a plain CSV of ``(image, landmark, x, y)``, or from phantoms (which carry
  ``jsrt166`` contours).
* Masks (segmentation): :func:`find_masks` pairs images with lung masks: files next to the
  image (``<stem>-mask.png``, ``<stem>_lung_seg.png``, ``idx.csv`` with ``img,mask``),
  ``semantic_masks*/`` folders under the data root with the image's file name, and masks
  rasterised from ``jsrt166`` lung contours (JSRT, phantoms).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from PIL import Image, ImageDraw

from leader.datasets.masks import mask_source, row_mask
from leader.datasets.pack import index_root
from leader.landmarks import JSRT166_NUM_POINTS, JSRT166_ORGANS, as_points
from leader.manifest import Manifest
from leader.patches import PATCH_COLUMNS, _make_table, _row_landmarks, _row_size, landmark_patches
from leader.phantoms import make_phantom_pack
from leader.zones import anatomy_patches, zone_patches

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def load_eval_manifest(manifest: str | Path | None = None, data_root: str | Path | None = None,
                       phantoms: int | None = None, out: str | Path | None = None, seed: int = 0,
                       phantom_size: int = 256) -> tuple[Manifest, str]:
    """Exactly one of ``manifest`` (Parquet), ``data_root`` or ``phantoms`` (count).

    Returns ``(manifest, plain description)``; phantoms are written under ``out/phantoms``.
    """
    given = [x is not None for x in (manifest, data_root, phantoms)]
    if sum(given) != 1:
        raise ValueError("give exactly one of --manifest, --data-root, --phantoms")
    if manifest is not None:
        m = Manifest.load(manifest)
        return m, f"{len(m)} images from manifest `{manifest}`"
    if data_root is not None:
        m = index_root(data_root, check_files=True)
        counts = m.df["dataset"].value_counts().to_dict()
        return m, (f"{len(m)} real radiographs indexed from `{data_root}` ("
                   + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + ")")

    if out is None:
        raise ValueError("phantoms need an output folder")
    pdir = Path(out) / "phantoms"
    if (pdir / "manifest.parquet").is_file() and len(Manifest.load(pdir / "manifest.parquet")) == int(phantoms):
        m = Manifest.load(pdir / "manifest.parquet")
    else:
        m = make_phantom_pack(pdir, n_images=int(phantoms), size=int(phantom_size), seed=seed)
    return m, f"{len(m)} procedurally generated chest phantoms (leader.phantoms, seed {seed}) — not real radiographs"


def _groups(df: pd.DataFrame) -> np.ndarray:
    if "patient_id" in df.columns:
        g = df["patient_id"].astype(str).to_numpy()
        ids = df["id"].astype(str).to_numpy()
        # the same patient id in two datasets is two patients
        ds = df["dataset"].astype(str).to_numpy() if "dataset" in df.columns else np.full(len(df), "")
        return np.array([f"{d}/{p}" if p not in ("", "nan", "None") else i for d, p, i in zip(ds, g, ids)])
    return df["id"].astype(str).to_numpy()


def eval_splits(manifest, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0,
                use_official: bool = True) -> np.ndarray:
    """``"train"`` / ``"val"`` / ``"test"`` per manifest row.

    With ``use_official`` and a manifest whose ``split`` column has ``test`` rows, that
    column is returned (``val`` missing: 1/8 of the training patients become ``val``).
    Otherwise patients (``dataset/patient_id``) are shuffled with ``seed`` and assigned by
    ``fractions``; every split gets at least one patient when there are three or more.
    """
    df = getattr(manifest, "df", manifest)
    n = len(df)
    groups = _groups(df)
    if use_official and "split" in df.columns and (df["split"] == "test").any():
        split = df["split"].astype(str).to_numpy().copy()
        if not (split == "val").any():
            tr = np.unique(groups[split == "train"])
            rng = np.random.default_rng(seed)
            val_g = set(rng.choice(tr, size=max(1, len(tr) // 8), replace=False).tolist()) if len(tr) > 1 else set()
            split[np.isin(groups, list(val_g)) & (split == "train")] = "val"
        return split
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or np.any(fr < 0) or fr.sum() <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    fr = fr / fr.sum()
    uniq = np.unique(groups)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(uniq)
    g = len(perm)
    n_val = int(round(fr[1] * g))
    n_test = int(round(fr[2] * g))
    if g >= 3:
        n_val, n_test = max(n_val, 1 if fr[1] > 0 else 0), max(n_test, 1 if fr[2] > 0 else 0)
    n_train = max(0, g - n_val - n_test)
    assign = {}
    for i, p in enumerate(perm):
        assign[p] = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
    out = np.array([assign[x] for x in groups], dtype=object)
    assert len(out) == n
    return out.astype(str)


def label_fraction(indices: np.ndarray, fraction: float, manifest=None, seed: int = 0,
                   min_count: int = 2) -> np.ndarray:
    """A seeded subset of ``indices`` holding ``fraction`` of them (at least ``min_count``),
    drawn by patient when ``manifest`` is given. ``fraction >= 1`` returns all, sorted."""
    idx = np.sort(np.asarray(indices, dtype=np.int64))
    if fraction >= 1.0 or len(idx) == 0:
        return idx
    if fraction <= 0:
        raise ValueError(f"label fraction must be > 0, got {fraction}")
    rng = np.random.default_rng([int(seed), int(round(fraction * 1e6))])
    want = max(min(min_count, len(idx)), int(round(fraction * len(idx))))
    if manifest is None:
        return np.sort(rng.choice(idx, size=want, replace=False))
    groups = _groups(getattr(manifest, "df", manifest))[idx]
    chosen: list[int] = []
    for g in rng.permutation(np.unique(groups)):
        chosen += idx[groups == g].tolist()
        if len(chosen) >= want:
            break
    return np.sort(np.asarray(chosen, dtype=np.int64))


def labelled_columns(manifest, min_known: int = 1) -> list[str]:
    """Label names with at least ``min_known`` known (non-NaN) values."""
    m = manifest if isinstance(manifest, Manifest) else Manifest(manifest)
    y = m.labels_array()
    return [n for j, n in enumerate(m.label_names) if np.sum(~np.isnan(y[:, j])) >= min_known]


# ---------------------------------------------------------------------------------------------
# landmark sources
# ---------------------------------------------------------------------------------------------
def organ_patches(manifest, points_per_organ: int = 4, size: float = 224, reference_width: float = 1024) -> pd.DataFrame:
    """Landmark patches grouped by organ: ``points_per_organ`` evenly spaced points along each
    ``jsrt166`` contour (right/left lung, heart, right/left clavicle), label = organ name."""

    df = getattr(manifest, "df", manifest)
    rows = []
    for i in range(len(df)):
        lm = _row_landmarks(df, i)
        if lm is None or lm.shape != (JSRT166_NUM_POINTS, 2):
            continue
        if "landmark_scheme" in df.columns and str(df["landmark_scheme"].iloc[i] or "") != "jsrt166":
            continue
        image_id = str(df["id"].iloc[i])
        w, _ = _row_size(df, i)
        side = float(size) * w / float(reference_width)
        for organ, sl in JSRT166_ORGANS.items():
            pts = lm[sl]
            for k in np.linspace(0, len(pts), int(points_per_organ), endpoint=False).astype(int):
                x, y = pts[k]
                rows.append(dict(patch_id=f"{image_id}::organ:{organ}:{k}", image_id=image_id, kind="landmark",
                                 label=organ, x0=x - side / 2, y0=y - side / 2, x1=x + side / 2, y1=y + side / 2))
    return _make_table(rows)


def csv_landmark_patches(manifest, csv_path: str | Path, size: float = 224,
                         reference_width: float = 1024) -> pd.DataFrame:
    """Landmark patches from a CSV with columns ``image, landmark, x, y``.

    ``image`` is matched to a manifest row by id, then by path, then by file name, then by
    file stem; ``x, y`` are pixels of the stored image (top-left origin). The patch side is
    ``size`` at a ``reference_width``-pixel-wide image, scaled with the image width.

    Raises:
        ValueError: missing columns, or images that match no manifest row (names them).
    """

    t = pd.read_csv(csv_path)
    need = {"image", "landmark", "x", "y"}
    if not need <= set(t.columns):
        raise ValueError(f"{csv_path}: needs columns {sorted(need)}, has {list(t.columns)}")
    df = getattr(manifest, "df", manifest)
    lookup: dict[str, int] = {}
    for i, (iid, p) in enumerate(zip(df["id"].astype(str), df["path"].astype(str))):
        for key in (Path(p).stem, Path(p).name, p, iid):  # later keys win: id beats path beats name
            lookup[key] = i
    rows, unknown = [], []
    count: dict[tuple[str, str], int] = {}
    for r in t.itertuples(index=False):
        img = str(r.image)
        i = lookup.get(img)
        if i is None:
            unknown.append(img)
            continue
        image_id = str(df["id"].iloc[i])
        w = df["width"].iloc[i] if "width" in df.columns else None
        w = float(w) if w is not None and not pd.isna(w) else float(reference_width)
        side = float(size) * w / float(reference_width)
        x, y = float(r.x), float(r.y)
        k = count.get((image_id, str(r.landmark)), 0)
        count[(image_id, str(r.landmark))] = k + 1
        rows.append(dict(patch_id=f"{image_id}::landmark:{r.landmark}" + (f":{k}" if k else ""), image_id=image_id,
                         kind="landmark", label=str(r.landmark), x0=x - side / 2, y0=y - side / 2,
                         x1=x + side / 2, y1=y + side / 2))
    if unknown:
        raise ValueError(f"{csv_path}: {len(unknown)} row(s) name images not in the manifest, e.g. {unknown[:3]}")
    return _make_table(rows)


def landmark_table(manifest, source: str = "jsrt166", size: float = 224, reference_width: float = 1024,
                   points_per_organ: int = 4) -> pd.DataFrame:
    """Anatomy patch table from ``source``: ``"jsrt166"`` (ten named landmarks from JSRT/SCR
    contours; also the phantoms'), ``"organs"`` (points along each contour, label = organ),
    ``"zones"`` (lung zones from lung masks, boxes or contours: :func:`leader.zones.zone_patches`),
    ``"anatomy"`` (zones and landmarks: :func:`leader.zones.anatomy_patches`) or the path of a
    CSV ``(image, landmark, x, y)``."""
    if source in ("jsrt166", "landmarks", "phantoms"):
        return landmark_patches(manifest, size=size, reference_width=reference_width)
    if source == "zones":
        return zone_patches(manifest)[list(PATCH_COLUMNS)]
    if source == "anatomy":
        return anatomy_patches(manifest)[list(PATCH_COLUMNS)]
    if source == "organs":
        return organ_patches(manifest, points_per_organ=points_per_organ, size=size, reference_width=reference_width)
    if Path(source).suffix.lower() == ".csv" or Path(source).is_file():
        return csv_landmark_patches(manifest, source, size=size, reference_width=reference_width)
    raise ValueError(f"unknown landmark source {source!r}: jsrt166, organs, zones, anatomy or a CSV file "
                     "(image, landmark, x, y)")


# ---------------------------------------------------------------------------------------------
# segmentation masks
# ---------------------------------------------------------------------------------------------
def lung_mask_from_landmarks(points, width: int, height: int) -> np.ndarray:
    """Binary ``uint8 [H, W]`` mask of both lungs from ``jsrt166`` contours (polygon fill)."""


    p = as_points(points)
    img = Image.new("L", (int(width), int(height)), 0)
    draw = ImageDraw.Draw(img)
    for organ in ("right_lung", "left_lung"):
        draw.polygon([tuple(map(float, q)) for q in p[JSRT166_ORGANS[organ]]], fill=1)
    return np.asarray(img, dtype=np.uint8)


def _read_mask(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:  # content-sniffed: a PNG called .jpg is read as PNG
        a = np.asarray(im.convert("L"))
    return (a > 127).astype(np.uint8)


def _idx_csv_masks(image: Path) -> Path | None:
    for folder in (image.parent, image.parent.parent):
        f = folder / "idx.csv"
        if f.is_file():
            try:
                t = pd.read_csv(f)
            except Exception:  # noqa: BLE001 - not ours
                continue
            if {"img", "mask"} <= set(t.columns):
                hit = t[t["img"].astype(str) == image.name]
                if len(hit):
                    cand = image.parent / str(hit["mask"].iloc[0])
                    if cand.is_file():
                        return cand
    return None


def find_masks(manifest, data_root: str | Path | None = None, from_landmarks: bool = True) -> pd.DataFrame:
    """Lung masks for manifest rows: ``DataFrame(image_id, source, mask_path)``.

    ``mask_path`` is a file, or ``""`` for masks rasterised from ``jsrt166`` lung contours
    (``source='jsrt166'``). A file mask wins over contours. Rules for files: ``idx.csv``
    (``img,mask``) in the image's folder or its parent; ``<stem>-mask.png``, ``<stem>_mask.png``,
    ``<stem>_lung_seg.png`` next to the image; ``<data_root>/**/semantic_masks*/<file name>``.
    A mask the dataset reader attached to the row (``lung_mask``, SCR organ masks; see
    :func:`leader.datasets.masks.mask_source`) comes first (``source='manifest'``).
    """
    df = getattr(manifest, "df", manifest)
    sem: dict[str, Path] = {}
    if data_root is not None:
        for d in Path(data_root).rglob("semantic_masks*"):
            if d.is_dir():
                for f in d.iterdir():
                    if f.is_file():
                        sem.setdefault(f.name, f)
    rows = []
    for i in range(len(df)):
        image_id = str(df["id"].iloc[i])
        src = mask_source(df, i, "lungs")
        if src is not None and src != "contours":  # a mask the reader attached (manual masks, SCR)
            path = str(df["lung_mask"].iloc[i]) if src == "file" else ""
            rows.append({"image_id": image_id, "source": "manifest", "mask_path": path})
            continue
        p = Path(str(df["path"].iloc[i]))
        found: Path | None = _idx_csv_masks(p)
        if found is None:
            for suffix in ("-mask.png", "_mask.png", "_lung_seg.png"):
                c = p.with_name(p.stem + suffix)
                if c.is_file():
                    found = c
                    break
        if found is None and p.name in sem:
            found = sem[p.name]
        if found is not None:
            rows.append({"image_id": image_id, "source": "file", "mask_path": str(found)})
            continue
        if from_landmarks and "landmarks" in df.columns:
            lm = df["landmarks"].iloc[i]
            scheme = str(df["landmark_scheme"].iloc[i] or "") if "landmark_scheme" in df.columns else "jsrt166"
            if lm is not None and not (np.isscalar(lm) and pd.isna(lm)) and scheme == "jsrt166" and len(lm) == 332:
                rows.append({"image_id": image_id, "source": "jsrt166", "mask_path": ""})
    return pd.DataFrame(rows, columns=["image_id", "source", "mask_path"])


def load_mask(manifest, row: pd.Series | dict) -> np.ndarray:
    """The ``uint8 [H, W]`` mask of one :func:`find_masks` row, in stored-image pixels."""
    df = getattr(manifest, "df", manifest)
    i = int(np.flatnonzero(df["id"].astype(str).to_numpy() == row["image_id"])[0])
    w, h = int(df["width"].iloc[i]), int(df["height"].iloc[i])
    if row["source"] == "jsrt166":
        return lung_mask_from_landmarks(np.asarray(df["landmarks"].iloc[i], np.float64), w, h)
    if row["source"] == "manifest":  # resized nearest-neighbour to the stored image by the reader's mask path
        return row_mask(df, i, "lungs").astype(np.uint8)
    m = _read_mask(row["mask_path"])
    if m.shape != (h, w):
        raise ValueError(f"mask {row['mask_path']} is {m.shape[1]}x{m.shape[0]} but image {row['image_id']} is {w}x{h}")
    return m
