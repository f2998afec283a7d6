"""Anatomy targets from real annotations: lung-zone patches (and landmark patches) for an
anatomy teacher and the zero-shot anatomy evaluation.

For every **frontal** image (``view`` PA or AP) that has lung annotations, the image is
divided into eight anatomical zones and ``n_per_zone`` square patches are cut from each:

==================  =========================================================================
label               zone
==================  =========================================================================
``right_upper``     the patient's right lung, upper third of its vertical extent
``right_middle``    ... middle third
``right_lower``     ... lower third
``left_upper``      the patient's left lung, upper / middle / lower third of its own extent
``left_middle``
``left_lower``
``mediastinum``     between the lungs: in each row where both lungs are present, the pixels
                    between the inner edge of one lung and the inner edge of the other
``outside``         every other pixel of the image (outside both lungs and the mediastinum)
==================  =========================================================================

**Sides.** Right and left are the *patient's*. On PA and AP radiographs, as displayed by
convention, the patient's right is on the **image left** (small ``x``); laterals and images
of unknown view are not used. Each lung's thirds are taken from its own top and bottom row,
so a lung lifted by an effusion or a collapsed lobe keeps three zones.

**Lung sources** (per row, first available; :func:`lung_sides`):

1. two separate lungs: SCR ``right lung`` / ``left lung`` masks or the ``jsrt166`` contours
   (points 0-43 and 44-93, filled);
2. one mask of both lungs (``lung_mask``, e.g. the V7 Labs masks of the COVID-19 image data
   collection): split into the two lungs at the column between its two largest connected
   components (the one more to the image left is the patient's right lung); when the lungs
   touch (one component), at the column of least lung area in the middle third of its
   bounding box;
3. with ``use_boxes`` (default), the coarse COCO lung boxes (``anatomy_boxes`` ``right lung``
   / ``left lung``): each box is taken as the lung. These patches are **coarse**.

**Patches.** A square of side ``size * width / reference_width`` pixels (default 128 px on a
1024-px-wide image), entirely inside the image, whose centre is a zone pixel and of which at
least ``min_cover`` lies in that zone (else the best-covered candidates); candidates lie on
a grid of step ``side // 8``.
Centres are drawn with a generator seeded by ``(seed, image id, zone)``, so the table does
not depend on row order. The table has the patch-table columns of :mod:`leader.patches`
(``patch_id = "{image_id}::zone:{label}:{k}"``, ``kind = "zone"``, stored-image pixels) plus
``coarse`` (bool: from boxes) and ``source`` (``"scr"``, ``"contours"``, ``"mask"``,
``"boxes"``) and ``cover`` (fraction of the square inside its zone).

:func:`anatomy_patches` adds the landmark-identity patches of
:func:`leader.patches.landmark_patches` (ten named landmarks of ``jsrt166`` rows).
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
import pandas as pd

from leader.errors import ManifestError

__all__ = ["ZONE_LABELS", "lung_sides", "zone_masks", "zone_patches", "anatomy_patches"]

#: The eight zone labels, in order.
ZONE_LABELS: tuple[str, ...] = ("right_upper", "right_middle", "right_lower", "left_upper", "left_middle",
                                "left_lower", "mediastinum", "outside")

_FRONTAL = ("PA", "AP")

#: The columns of a :mod:`leader.patches` patch table (the same tuple as
#: ``leader.patches.PATCH_COLUMNS``; not imported from there because that imports torch).
PATCH_COLUMNS: tuple[str, ...] = ("patch_id", "image_id", "kind", "label", "x0", "y0", "x1", "y1")


# ------------------------------------------------------------------------------------ lungs


def _split_both_lungs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(image-left lung, image-right lung)`` of one mask of both lungs (see module doc)."""
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n == 0:
        raise ValueError("the lung mask is empty")
    areas = np.bincount(lab.ravel())[1:]
    order = np.argsort(areas)[::-1]
    cols = np.arange(mask.shape[1])
    if n >= 2 and areas[order[1]] >= 0.1 * areas[order[0]]:
        a, b = (lab == order[0] + 1), (lab == order[1] + 1)
        ax, bx = cols[a.any(axis=0)], cols[b.any(axis=0)]
        if ax.mean() > bx.mean():
            ax, bx = bx, ax
        split = (ax.max() + bx.min()) / 2.0 if ax.max() < bx.min() else (ax.mean() + bx.mean()) / 2.0
    else:  # lungs touching: the narrowest column in the middle third of the mask
        xs = cols[mask.any(axis=0)]
        lo, hi = xs.min(), xs.max()
        third = max((hi - lo) // 3, 1)
        band = np.arange(lo + third, hi - third + 1)
        if len(band) == 0:
            raise ValueError("the lung mask is too narrow to split into two lungs")
        counts = mask[:, band].sum(axis=0)
        split = float(band[int(np.argmin(counts))])
    left_img = mask & (cols[None, :] < split)
    right_img = mask & (cols[None, :] >= split)
    if not left_img.any() or not right_img.any():
        raise ValueError("could not find two lungs in the mask")
    return left_img, right_img


def _box_mask(box, w: int, h: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    x0, y0 = max(int(np.floor(box.x0)), 0), max(int(np.floor(box.y0)), 0)
    x1, y1 = min(int(np.ceil(box.x1)), w), min(int(np.ceil(box.y1)), h)
    m[y0:y1, x0:x1] = True
    return m


def lung_sides(manifest, i: int, *, use_boxes: bool = True, allow_generated: bool = False
               ) -> tuple[np.ndarray, np.ndarray, str]:
    """``(right, left, source)``: the patient's right and left lung of row ``i`` as ``bool
    [H, W]`` stored-image masks and the source used (``"scr"``, ``"contours"``, ``"mask"``,
    ``"generated"``, ``"boxes"``); see the module docstring.

    Raises:
        ManifestError: the row has no lung annotation (or only boxes with ``use_boxes=False``),
            or its mask is empty / cannot be split into two lungs (names the image id).
    """
    from leader.datasets.masks import _scr_lungs, mask_source, read_mask_file, resize_mask, row_mask

    df = getattr(manifest, "df", manifest)
    image_id = str(df["id"].iat[i])
    src = mask_source(df, i, "lungs", allow_generated=allow_generated)
    if src is None:
        boxes = None
        if use_boxes and "anatomy_boxes" in df.columns:
            cell = df["anatomy_boxes"].iat[i]
            if cell is not None and not (isinstance(cell, float) and np.isnan(cell)):
                from leader.manifest import Box

                boxes = {b["label"]: Box.from_dict(b) for b in cell}
        if not boxes or not {"right lung", "left lung"} <= set(boxes):
            raise ManifestError(f"{image_id}: no lung mask, contours or right/left lung boxes")
        w, h = int(df["width"].iat[i]), int(df["height"].iat[i])
        return _box_mask(boxes["right lung"], w, h), _box_mask(boxes["left lung"], w, h), "boxes"
    if src == "contours":
        from PIL import Image, ImageDraw

        from leader.landmarks import JSRT166_ORGANS, as_points

        p = as_points(df["landmarks"].iat[i])
        w, h = int(df["width"].iat[i]), int(df["height"].iat[i])
        out = []
        for organ in ("right_lung", "left_lung"):
            img = Image.new("L", (w, h), 0)
            ImageDraw.Draw(img).polygon([tuple(map(float, q)) for q in p[JSRT166_ORGANS[organ]]], fill=1)
            out.append(np.asarray(img) > 0)
        return out[0], out[1], "contours"
    if src == "scr":
        w, h = int(df["width"].iat[i]), int(df["height"].iat[i])
        right, left = (resize_mask(read_mask_file(p), w, h) for p in _scr_lungs(df, i))
        return right, left, "scr"
    mask = row_mask(df, i, "lungs", allow_generated=allow_generated)
    try:
        img_left, img_right = _split_both_lungs(mask)
    except ValueError as e:
        raise ManifestError(f"{image_id}: {e}") from None
    return img_left, img_right, "mask" if src == "file" else "generated"


def zone_masks(right: np.ndarray, left: np.ndarray) -> dict[str, np.ndarray]:
    """The eight zones (:data:`ZONE_LABELS` -> ``bool [H, W]``, disjoint) of an image from its
    patient-right and patient-left lung masks (see the module docstring for the rules).

    Raises:
        ValueError: a lung mask is empty or the two differ in shape.
    """
    right, left = np.asarray(right, bool), np.asarray(left, bool)
    if right.shape != left.shape:
        raise ValueError(f"lung masks differ in shape: {right.shape} vs {left.shape}")
    if not right.any() or not left.any():
        raise ValueError("a lung mask is empty")
    h, w = right.shape
    rows = np.arange(h)[:, None]
    zones: dict[str, np.ndarray] = {}
    for side, lung in (("right", right), ("left", left)):
        ys = np.flatnonzero(lung.any(axis=1))
        top, bottom = ys.min(), ys.max() + 1
        cuts = top + (bottom - top) * np.array([0, 1, 2, 3]) / 3.0
        for k, name in enumerate(("upper", "middle", "lower")):
            zones[f"{side}_{name}"] = lung & (rows >= cuts[k]) & (rows < cuts[k + 1])
    # mediastinum: per row, between the inner edges of the two lungs (image left lung = the one
    # with the smaller mean column)
    cols = np.arange(w)
    a, b = (right, left) if cols[right.any(axis=0)].mean() <= cols[left.any(axis=0)].mean() else (left, right)
    both = a.any(axis=1) & b.any(axis=1)
    a_inner = np.where(a, cols[None, :], -1).max(axis=1)  # rightmost column of the image-left lung
    b_inner = np.where(b, cols[None, :], w).min(axis=1)  # leftmost column of the image-right lung
    med = both[:, None] & (cols[None, :] > a_inner[:, None]) & (cols[None, :] < b_inner[:, None])
    zones["mediastinum"] = med & ~right & ~left
    zones["outside"] = ~(right | left | zones["mediastinum"])
    return {k: zones[k] for k in ZONE_LABELS}


# ---------------------------------------------------------------------------------- patches


def _centres(zone: np.ndarray, side: int, n: int, min_cover: float, rng: np.random.Generator
             ) -> list[tuple[float, float, float]]:
    """``n`` ``(x0, y0, cover)`` top-left corners of ``side`` x ``side`` squares inside the
    image whose centre pixel is in ``zone`` and of which at least ``min_cover`` lies in the zone
    (else the best ones). Candidates lie on a grid of step ``s = max(1, side // 8)`` and are
    ranked by their cover measured on ``s`` x ``s`` blocks; ``cover`` is then the exact
    fraction of the chosen square inside the zone."""
    h, w = zone.shape
    if side > w or side > h or n <= 0 or not zone.any():
        return []
    s = max(1, side // 8)
    hb, wb = h // s, w // s
    blocks = zone[:hb * s, :wb * s].reshape(hb, s, wb, s).sum(axis=(1, 3), dtype=np.int32)
    sat = np.zeros((hb + 1, wb + 1), dtype=np.int64)
    sat[1:, 1:] = blocks.cumsum(0).cumsum(1)
    k = max(1, int(round(side / s)))
    by, bx = np.mgrid[0:hb - k + 1, 0:wb - k + 1]
    by, bx = by.ravel(), bx.ravel()
    y0, x0 = by * s, bx * s
    fit = (y0 + side <= h) & (x0 + side <= w)
    fit &= zone[np.minimum(y0 + side // 2, h - 1), np.minimum(x0 + side // 2, w - 1)]
    by, bx, y0, x0 = by[fit], bx[fit], y0[fit], x0[fit]
    if not len(y0):
        return []
    cover = (sat[by + k, bx + k] - sat[by, bx + k] - sat[by + k, bx] + sat[by, bx]) / float(k * k * s * s)
    good = np.flatnonzero(cover >= min_cover)
    if not len(good):
        good = np.flatnonzero(cover >= cover.max() - 1e-12)
    pick = rng.choice(good, size=min(n, len(good)), replace=False)
    out = []
    for j in sorted(pick.tolist(), key=lambda j: (y0[j], x0[j])):
        exact = float(zone[y0[j]:y0[j] + side, x0[j]:x0[j] + side].mean())
        out.append((float(x0[j]), float(y0[j]), exact))
    return out


def zone_patches(manifest, n_per_zone: int = 2, size: float = 128, reference_width: float = 1024,
                 seed: int = 0, min_cover: float = 0.5, *, views: Sequence[str] = _FRONTAL,
                 use_boxes: bool = True, allow_generated: bool = False, on_error: str = "raise") -> pd.DataFrame:
    """Zone patches of every frontal row with lung annotations (see the module docstring).

    Args:
        manifest: :class:`~leader.manifest.Manifest` (or its DataFrame) with ``width`` /
            ``height`` known for the rows used.
        n_per_zone: patches per zone and image (fewer when a zone has fewer valid centres).
        size, reference_width: patch side ``size * width / reference_width`` pixels.
        seed: sampling seed.
        min_cover: fraction of the square that must lie in its zone, in ``(0, 1]``.
        views: views used (default PA and AP; the side convention needs a frontal view).
        use_boxes: also use coarse lung boxes where a row has no mask (``coarse=True``).
        allow_generated: also use model-generated lung masks.
        on_error: ``"raise"`` or ``"skip"`` (rows whose lungs cannot be found are left out,
            counted in the table's ``attrs["skipped"]``: ``{image_id: reason}``).

    Returns:
        ``DataFrame`` with :data:`leader.patches.PATCH_COLUMNS` (``kind="zone"``, ``label`` in
        :data:`ZONE_LABELS`, float64 stored-image pixels) + ``coarse`` (bool), ``source``
        (str), ``cover`` (float64).

    Raises:
        ValueError: bad ``n_per_zone`` / ``size`` / ``min_cover`` / ``on_error``.
        ManifestError: (``on_error="raise"``) a row whose lung annotation is unusable.
    """
    from leader.datasets.masks import has_mask

    if n_per_zone < 0 or size <= 0 or reference_width <= 0 or not (0 < min_cover <= 1):
        raise ValueError(f"need n_per_zone >= 0, size > 0, reference_width > 0, 0 < min_cover <= 1; got "
                         f"{n_per_zone}, {size}, {reference_width}, {min_cover}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    df = getattr(manifest, "df", manifest)
    frontal = df["view"].isin(list(views)).to_numpy() if "view" in df.columns else np.zeros(len(df), bool)
    usable = has_mask(df, allow_generated=allow_generated)
    if use_boxes and "anatomy_boxes" in df.columns:
        usable |= df["anatomy_boxes"].map(lambda c: isinstance(c, list) and len(c) >= 2).to_numpy()
    rows: list[dict] = []
    skipped: dict[str, str] = {}
    for i in np.flatnonzero(frontal & usable):
        i = int(i)
        image_id = str(df["id"].iat[i])
        try:
            right, left, src = lung_sides(df, i, use_boxes=use_boxes, allow_generated=allow_generated)
            zones = zone_masks(right, left)
        except (ManifestError, ValueError) as e:
            if on_error == "raise":
                raise ManifestError(f"{image_id}: {e}" if not str(e).startswith(image_id) else str(e)) from None
            skipped[image_id] = str(e)
            continue
        w = right.shape[1]
        side = int(round(float(size) * w / float(reference_width)))
        for label, zone in zones.items():
            rng = np.random.default_rng([int(seed), zlib.crc32(image_id.encode("utf-8")), ZONE_LABELS.index(label)])
            for k, (x0, y0, cover) in enumerate(_centres(zone, side, int(n_per_zone), min_cover, rng)):
                rows.append({"patch_id": f"{image_id}::zone:{label}:{k}", "image_id": image_id, "kind": "zone",
                             "label": label, "x0": x0, "y0": y0, "x1": x0 + side, "y1": y0 + side,
                             "coarse": src == "boxes", "source": src, "cover": cover})
    out = pd.DataFrame(rows, columns=list(PATCH_COLUMNS) + ["coarse", "source", "cover"])
    for c in ("patch_id", "image_id", "kind", "label", "source"):
        out[c] = out[c].astype(object)
    for c in ("x0", "y0", "x1", "y1", "cover"):
        out[c] = out[c].astype(np.float64)
    out["coarse"] = out["coarse"].astype(bool)
    out.attrs["skipped"] = skipped
    return out


def anatomy_patches(manifest, n_per_zone: int = 2, size: float = 128, reference_width: float = 1024,
                    seed: int = 0, *, landmark_size: float = 224, **kw) -> pd.DataFrame:
    """Zone patches (:func:`zone_patches`) plus the landmark-identity patches of
    :func:`leader.patches.landmark_patches` (``kind="landmark"``, ten named landmarks of each
    ``jsrt166`` row, side ``landmark_size`` at ``reference_width``); the landmark rows get
    ``coarse=False``, ``source="contours"`` and ``cover`` NaN. Same columns as
    :func:`zone_patches`."""
    from leader.patches import landmark_patches

    z = zone_patches(manifest, n_per_zone, size, reference_width, seed, **kw)
    lm = landmark_patches(manifest, size=landmark_size, reference_width=reference_width).copy()
    lm["coarse"] = False
    lm["source"] = "contours"
    lm["cover"] = np.nan
    out = pd.concat([z, lm[z.columns]], ignore_index=True) if len(lm) else z
    out["coarse"] = out["coarse"].astype(bool)
    out.attrs["skipped"] = z.attrs.get("skipped", {})
    if not out["patch_id"].is_unique:
        raise ManifestError("duplicate patch ids (duplicate image ids in the manifest?)")
    return out
