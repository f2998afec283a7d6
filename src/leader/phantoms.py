"""Procedurally generated chest-radiograph phantoms with known anatomy and lesion boxes.

These are the demo's default data on a fresh machine (no downloads): every phantom comes with

* the ``jsrt166`` landmark contours (same order and semantics as the JSRT/SCR HybridGNet files,
  see :mod:`leader.landmarks`: 44 right-lung, 50 left-lung, 26 heart, 23 + 23 clavicle points;
  patient's right on the image left), and
* disease boxes for the synthetic lesions ``'Nodule'`` (small bright disc) and
  ``'Consolidation'`` (larger hazy bright patch), always placed inside a lung.

Phantoms are *not* realistic radiographs; they have the coarse layout of a PA chest film (dark air
background, soft-tissue body, dark lungs with rib and vessel texture, bright mediastinum, heart and
clavicles) so that the whole pipeline (manifest -> patches -> teachers -> training -> evaluation)
can run end to end with geometrically meaningful boxes and landmarks.

Pixel convention: images are ``float32 [H, W]`` in ``[0, 1]`` with air dark; all coordinates are
``(x, y)`` in pixels of the generated image, top-left origin.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw
from scipy.ndimage import gaussian_filter

__all__ = ["LESION_LABELS", "make_phantom", "make_phantom_pack"]

#: Lesion labels a phantom can carry (also the manifest's ``label:<Name>`` columns).
LESION_LABELS: tuple[str, ...] = ("Nodule", "Consolidation")

# Mean control polygons in normalised (x, y) units of the image (x right, y down). Each lung
# starts at its apex and runs laterally down to the costophrenic angle, along the diaphragm and
# back up the medial border -- the same orientation as the HybridGNet contours.
_RIGHT_LUNG = np.array([
    (0.365, 0.075), (0.29, 0.10), (0.225, 0.19), (0.185, 0.33), (0.16, 0.50), (0.145, 0.68),
    (0.13, 0.86),                                       # costophrenic angle
    (0.19, 0.80), (0.27, 0.755), (0.35, 0.745), (0.425, 0.76),   # diaphragm dome
    (0.435, 0.62), (0.425, 0.46), (0.415, 0.31), (0.405, 0.18), (0.395, 0.11),
])
_LEFT_LUNG = np.array([
    (0.635, 0.075), (0.71, 0.10), (0.775, 0.19), (0.815, 0.33), (0.84, 0.50), (0.855, 0.68),
    (0.87, 0.875),                                      # costophrenic angle
    (0.81, 0.835), (0.75, 0.81), (0.70, 0.80),          # diaphragm, to the heart apex
    (0.66, 0.70), (0.615, 0.60), (0.59, 0.50),          # cardiac notch
    (0.585, 0.38), (0.59, 0.25), (0.60, 0.15), (0.615, 0.10),
])
_N_POINTS = {"right_lung": 44, "left_lung": 50, "heart": 26, "right_clavicle": 23, "left_clavicle": 23}


def _chaikin(poly: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Chaikin corner cutting of a closed polygon (smooth, no overshoot)."""
    p = poly
    for _ in range(iterations):
        q = np.roll(p, -1, axis=0)
        p = np.stack([0.75 * p + 0.25 * q, 0.25 * p + 0.75 * q], axis=1).reshape(-1, 2)
    return p


def _resample_closed(poly: np.ndarray, n: int, start: np.ndarray | None = None) -> np.ndarray:
    """``n`` points equally spaced by arc length along a closed polygon.

    Starts at the polygon vertex nearest ``start`` (or vertex 0)."""
    if start is not None:
        k = int(np.argmin(((poly - start) ** 2).sum(1)))
        poly = np.roll(poly, -k, axis=0)
    closed = np.vstack([poly, poly[:1]])
    seg = np.sqrt((np.diff(closed, axis=0) ** 2).sum(1))
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, cum[-1], n, endpoint=False)
    return np.stack([np.interp(t, cum, closed[:, 0]), np.interp(t, cum, closed[:, 1])], axis=1)


def _push_out_of(poly: np.ndarray, blob: np.ndarray, centre: np.ndarray, gap: float = 0.004) -> np.ndarray:
    """Move the points of ``poly`` that fall inside the star-shaped ``blob`` (dense closed
    contour around ``centre``) radially onto its boundary (+``gap``): a lung hugging the heart."""
    d = blob - centre
    ang, rad = np.arctan2(d[:, 1], d[:, 0]), np.hypot(d[:, 0], d[:, 1])
    order = np.argsort(ang)
    ang, rad = ang[order], rad[order]
    q = poly - centre
    qa, qr = np.arctan2(q[:, 1], q[:, 0]), np.hypot(q[:, 0], q[:, 1])
    limit = np.interp(qa, ang, rad, period=2 * np.pi) + gap
    inside = qr < limit
    out = poly.copy()
    out[inside] = centre + (q[inside] / np.maximum(qr[inside], 1e-9)[:, None]) * limit[inside, None]
    return out


def _lung_contour(base: np.ndarray, n: int, rng: np.random.Generator, jitter: float,
                  heart: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    ctrl = base + rng.normal(0.0, jitter, size=base.shape)
    smooth = _push_out_of(_chaikin(ctrl, 4), *heart)
    return _resample_closed(smooth, n, start=ctrl[0])


def _heart_contour(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tilted ellipse with low-order radial wobble; long axis upper-left -> lower-right.

    Returns ``(n points, dense contour, centre)``."""
    cx, cy = 0.555 + rng.normal(0, 0.012), 0.655 + rng.normal(0, 0.015)
    a, b = 0.175 * rng.uniform(0.9, 1.12), 0.115 * rng.uniform(0.9, 1.12)
    ang = np.deg2rad(rng.uniform(14, 26))
    t = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    r = 1.0 + 0.04 * np.sin(2 * t + rng.uniform(0, 2 * np.pi)) + 0.03 * np.sin(3 * t + rng.uniform(0, 2 * np.pi))
    x, y = a * r * np.cos(t), b * r * np.sin(t)
    # sharpen the apex (the end pointing to the lower right)
    x = x * (1 + 0.12 * np.clip(np.cos(t), 0, None) ** 3)
    pts = np.stack([cx + x * np.cos(ang) - y * np.sin(ang), cy + x * np.sin(ang) + y * np.cos(ang)], 1)
    start = pts[int(np.argmax(pts[:, 1] - pts[:, 0]))]     # lower-left of the heart, as in JSRT
    return _resample_closed(pts, n, start=start), pts, np.array([cx, cy])


def _clavicle_contour(rng: np.random.Generator, n: int, side: str) -> np.ndarray:
    """Bar along a gently curved centre line; lateral end first (as in JSRT), medial end lower."""
    lat = np.array([0.215, 0.125]) + rng.normal(0, 0.01, 2)
    med = np.array([0.445, 0.205]) + rng.normal(0, 0.01, 2)
    half = 0.5 * 0.032 * rng.uniform(0.85, 1.15)
    k = (n - 1) // 2                                    # points per long edge
    s = np.linspace(0, 1, k)
    centre = lat[None] + s[:, None] * (med - lat)[None]
    d = (med - lat) / np.linalg.norm(med - lat)
    normal = np.array([-d[1], d[0]])                   # points down-ish (towards +y)
    centre = centre - normal[None] * (0.018 * np.sin(np.pi * s))[:, None]  # slight upward bow
    width = half * (0.8 + 0.4 * s)                      # medial end a bit thicker
    top = centre - normal[None] * width[:, None]
    bottom = centre + normal[None] * width[:, None]
    tip = med + d * half * 0.8
    pts = np.vstack([top, tip[None], bottom[::-1]])
    if side == "left":
        pts = pts.copy()
        pts[:, 0] = 1.0 - pts[:, 0]
    return pts


def _poly_mask(points_px: np.ndarray, size: int, blur: float) -> np.ndarray:
    img = PILImage.new("L", (size, size), 0)
    ImageDraw.Draw(img).polygon([tuple(map(float, p)) for p in points_px], fill=255)
    m = np.asarray(img, dtype=np.float32) / 255.0
    return gaussian_filter(m, blur, truncate=3.0) if blur > 0 else m


def _lowres_noise(rng: np.random.Generator, size: int, grid: int) -> np.ndarray:
    """Smooth noise field in about [-1, 1] (bicubic upsampling of a small random grid)."""
    g = rng.normal(0, 1, (grid, grid)).astype(np.float32)
    up = np.asarray(PILImage.fromarray(g, mode="F").resize((size, size), PILImage.BICUBIC))
    return up / max(float(np.abs(up).max()), 1e-6)


def _inside(mask: np.ndarray, x: float, y: float) -> bool:
    h, w = mask.shape
    xi, yi = int(round(x)), int(round(y))
    return 0 <= xi < w and 0 <= yi < h and mask[yi, xi] > 0.5


def _sample_in_lungs(rng, lung_mask, lung_pts, radius, tries=400):
    """Random centre inside a lung such that the points at ``radius`` around it are too."""
    for _ in range(tries):
        pts = lung_pts[rng.integers(0, 2)]
        x0, y0 = pts.min(0)
        x1, y1 = pts.max(0)
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        ring = [(x + radius * np.cos(t), y + radius * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 8, endpoint=False)]
        if _inside(lung_mask, x, y) and all(_inside(lung_mask, a, b) for a, b in ring):
            return float(x), float(y)
    # fall back to the centroid of the larger lung (always inside for these shapes)
    pts = lung_pts[0]
    return float(pts[:, 0].mean()), float(pts[:, 1].mean())


def make_phantom(rng, size: int = 512, *, lesions=None, lesion_scale: float | Mapping[str, float] = 1.0):
    """Generate one chest phantom.

    Args:
        rng: ``numpy.random.Generator`` (or an int seed). All randomness comes from it, so a
            phantom is a deterministic function of the generator state. Anatomy, lesions and
            acquisition noise use independent child streams, so the same state with a different
            ``lesions`` argument gives the same body with/without the lesion (paired images).
        size: output side length in pixels (square image), >= 64.
        lesions: ``None`` (random: about 40 % normal, otherwise a nodule, a consolidation or
            both) or an explicit sequence of labels from :data:`LESION_LABELS` (``[]`` = normal).
        lesion_scale: multiplies the lesion radii (nodule 1.4-3 %, consolidation 5-9 % of the
            side at 1.0), one factor or ``{label: factor}``; larger lesions stay visible when the
            images are shrunk (the claims' controlled world trains at 64 px).

    Returns:
        ``(pixels, landmarks, boxes)``:

        * ``pixels``: float32 ``[size, size]`` in ``[0, 1]``, air dark.
        * ``landmarks``: float64 ``[166, 2]`` ``(x, y)`` pixels in the ``jsrt166`` order
          (0-43 right lung, 44-93 left lung, 94-119 heart, 120-142 right clavicle,
          143-165 left clavicle; patient's right = image left).
        * ``boxes``: ``list[leader.manifest.Box]`` (``x0, y0, x1, y1`` pixels, ``label`` in
          :data:`LESION_LABELS`), one per lesion; empty for a normal phantom.

    Raises:
        ValueError: ``size < 64`` or an unknown lesion label.
    """
    from leader.manifest import Box

    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    # independent streams for anatomy (rng itself), lesions and acquisition noise: the same
    # generator state gives the same anatomy and noise whatever lesions are drawn
    l_rng, n_rng = (np.random.default_rng(int(s)) for s in rng.integers(0, 2**63 - 1, size=2))
    size = int(size)
    scales = dict(lesion_scale) if isinstance(lesion_scale, Mapping) else {lab: lesion_scale for lab in LESION_LABELS}
    if any(not float(scales.get(lab, 1.0)) > 0 for lab in LESION_LABELS):
        raise ValueError(f"lesion_scale must be > 0, got {lesion_scale}")
    if size < 64:
        raise ValueError(f"phantom size must be >= 64 pixels, got {size}")
    if lesions is None:
        u = l_rng.uniform()
        lesions = [] if u < 0.4 else (["Nodule"] if u < 0.65 else (["Consolidation"] if u < 0.9 else ["Nodule", "Consolidation"]))
    lesions = list(lesions)
    for lab in lesions:
        if lab not in LESION_LABELS:
            raise ValueError(f"unknown phantom lesion {lab!r}; known: {LESION_LABELS}")

    S = size
    # ---- anatomy (normalised units), with a global similarity jitter -------------------
    heart, heart_dense, heart_c = _heart_contour(rng, _N_POINTS["heart"])
    rl = _lung_contour(_RIGHT_LUNG, _N_POINTS["right_lung"], rng, 0.008, (heart_dense, heart_c))
    ll = _lung_contour(_LEFT_LUNG, _N_POINTS["left_lung"], rng, 0.008, (heart_dense, heart_c))
    rc = _clavicle_contour(rng, _N_POINTS["right_clavicle"], "right")
    lc = _clavicle_contour(rng, _N_POINTS["left_clavicle"], "left")
    norm = np.vstack([rl, ll, heart, rc, lc])
    sx, sy = float(rng.uniform(0.92, 1.05)), float(rng.uniform(0.92, 1.06))
    rot = np.deg2rad(rng.normal(0, 2.0))
    c = np.array([0.5, 0.5])
    R = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    shift = [float(v) for v in rng.normal(0, 0.015, 2)]
    norm = ((norm - c) * [sx, sy]) @ R.T + c + np.asarray(shift)
    pts = norm * S                                       # pixels
    rl_px, ll_px, h_px = pts[0:44], pts[44:94], pts[94:120]
    rc_px, lc_px = pts[120:143], pts[143:166]

    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    u, v = xx / S, yy / S

    # ---- body: soft-tissue torso + neck + shoulders ------------------------------------
    body_c = 0.5 + shift[0]
    torso = ((u - body_c) / (0.53 * sx)) ** 2 + ((v - 0.72) / 0.78) ** 2 <= 1.0
    neck = (np.abs(u - body_c) < 0.12) & (v < 0.25)
    shoulders = ((((u - body_c) / 0.56) ** 2 + ((v - 0.34) / 0.26) ** 2) <= 1.0)
    body = (torso | neck | shoulders).astype(np.float32)
    body = gaussian_filter(body, 0.015 * S, truncate=3.0)
    tissue = float(rng.uniform(0.58, 0.68))
    img = 0.03 + (tissue - 0.03) * body
    # thinner tissue towards the lateral edges of the torso
    img *= 1.0 - 0.15 * np.clip(np.abs(u - body_c) / 0.5, 0, 1) ** 2
    # mediastinum / spine column, wider at the top (great vessels)
    width = 0.05 + 0.02 * np.clip((0.45 - v) / 0.3, 0, 1)
    spine = np.exp(-0.5 * ((u - body_c - 0.005) / width) ** 4)
    img += 0.1 * spine * body
    # vertebral bodies: faint horizontal banding along the spine
    img += 0.012 * spine * body * np.cos(2 * np.pi * v / 0.045) * np.exp(-0.5 * ((u - body_c) / 0.03) ** 2)
    # abdomen below the diaphragm slightly brighter
    img += 0.05 * body * np.clip((v - 0.75) / 0.1, 0, 1)

    # ---- lungs --------------------------------------------------------------------------
    blur = 0.006 * S
    lung_r = _poly_mask(rl_px, S, blur)
    lung_l = _poly_mask(ll_px, S, blur)
    lungs = np.clip(lung_r + lung_l, 0, 1)
    lung_hard = (lungs > 0.5).astype(np.float32)
    darkness = float(rng.uniform(0.30, 0.40))
    # lungs darker laterally/upper, a little denser near bases and hila
    grad = 1.0 - 0.25 * np.clip((v - 0.55) / 0.3, 0, 1)
    texture = 0.5 * _lowres_noise(rng, S, 48) + 0.3 * _lowres_noise(rng, S, 96)
    img -= darkness * lungs * grad * (1 + 0.12 * texture)
    # hilar vessels: bright blobs at the medial mid-lungs
    for hx in (0.40, 0.61):
        hxx = hx + shift[0]
        img += 0.10 * lungs * np.exp(-(((u - hxx) / 0.05) ** 2 + ((v - 0.42 - shift[1]) / 0.09) ** 2))
    # posterior ribs: bands rising laterally from the spine then curving down; visible over lungs
    spacing = float(rng.uniform(0.07, 0.082))
    off = float(rng.uniform(0, 1))
    for side_sign in (-1.0, 1.0):
        xm = body_c + side_sign * 0.04
        dx = np.clip(side_sign * (u - xm), 0, None)
        phase = (v + 0.6 * dx - 2.4 * dx**2) / spacing + off
        band = np.clip((np.cos(2 * np.pi * phase) - 0.55) / 0.45, 0, 1)
        mask_side = (u - body_c) * side_sign > 0
        img += 0.07 * band * lungs * mask_side * (1 + 0.3 * texture)
    # fine vessel-like texture, stronger near the hila
    fine = _lowres_noise(rng, S, 160)
    img += 0.035 * lungs * fine * np.exp(-0.5 * ((np.abs(u - body_c) - 0.12) / 0.12) ** 2)

    # ---- heart and clavicles ----------------------------------------------------------------
    heart_m = _poly_mask(h_px, S, 0.008 * S)
    heart_level = tissue + float(rng.uniform(0.05, 0.1))
    heart_shade = heart_level * (1.0 + 0.05 * _lowres_noise(rng, S, 12))
    img = img * (1 - heart_m) + np.maximum(img, heart_shade) * heart_m
    clav = np.clip(_poly_mask(rc_px, S, 0.003 * S) + _poly_mask(lc_px, S, 0.003 * S), 0, 1)
    img += float(rng.uniform(0.14, 0.2)) * clav

    # ---- lesions ----------------------------------------------------------------------------
    boxes = []
    for lab in lesions:
        if lab == "Nodule":
            r = float(l_rng.uniform(0.014, 0.03)) * S * float(scales.get("Nodule", 1.0))
            cx, cy = _sample_in_lungs(l_rng, lung_hard, (rl_px, ll_px), r * 1.3)
            d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
            disc = np.clip((r - d) / max(1.0, 0.15 * r) + 0.5, 0, 1)
            img += float(l_rng.uniform(0.18, 0.3)) * disc
            boxes.append(Box(float(cx - r), float(cy - r), float(cx + r), float(cy + r), "Nodule"))
        else:  # Consolidation
            r = float(l_rng.uniform(0.05, 0.09)) * S * float(scales.get("Consolidation", 1.0))
            cx, cy = _sample_in_lungs(l_rng, lung_hard, (rl_px, ll_px), r * 0.8)
            field = np.zeros((S, S), np.float32)
            for _ in range(int(l_rng.integers(3, 6))):
                bx, by = cx + float(l_rng.normal(0, 0.45 * r)), cy + float(l_rng.normal(0, 0.45 * r))
                sg = float(l_rng.uniform(0.35, 0.6)) * r
                field += np.exp(-(((xx - bx) ** 2 + (yy - by) ** 2) / (2 * sg * sg)))
            field = np.clip(field / field.max(), 0, 1) * lung_hard
            patchy = 1.0 + 0.25 * _lowres_noise(l_rng, S, 64)
            img += float(l_rng.uniform(0.3, 0.4)) * field * patchy
            ys, xs = np.nonzero(field > 0.2)
            if xs.size == 0:          # pragma: no cover - field always has its peak in the lung
                ys, xs = np.array([int(cy)]), np.array([int(cx)])
            boxes.append(Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1), "Consolidation"))

    # ---- acquisition: mild blur, gain/gamma, noise ----------------------------------------------
    img = gaussian_filter(img, 0.6)
    img = np.clip(img, 0, 1) ** float(n_rng.uniform(0.9, 1.1))
    img = img + n_rng.normal(0, 0.01, img.shape).astype(np.float32)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    return img, pts.astype(np.float64), boxes


def make_phantom_pack(out_dir, n_images: int = 60, size: int = 512, seed: int = 0,
                      lesion_scale: float | Mapping[str, float] = 1.0):
    """Write ``n_images`` phantoms as 8-bit PNGs and return their manifest.

    Files: ``out_dir/images/phantom_{i:04d}.png`` (mode ``L``, air dark) and
    ``out_dir/manifest.parquet`` (saved with :meth:`Manifest.save`). Manifest rows: ``id``
    ``"phantom/phantom_{i:04d}"``, ``dataset='phantom'``, ``split='train'``, ``view='PA'``,
    ``width=height=size``, ``pixel_spacing = 358.4 / size`` mm (the JSRT field of view),
    ``normal`` (no lesion), ``boxes`` (stored-image pixels), ``landmarks`` (flattened
    ``jsrt166``, pixels) with ``landmark_scheme='jsrt166'`` and labels ``Nodule`` /
    ``Consolidation`` (1.0 / 0.0).

    ``lesion_scale`` is passed to :func:`make_phantom`.

    Deterministic: phantom ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, so the
    same ``seed`` gives identical files, and a larger ``n_images`` extends a smaller pack.
    Takes about 0.1 s per 512-px image on one CPU core.

    Raises:
        ValueError: ``n_images < 1`` or ``size < 64``.
    """
    from leader.manifest import make_manifest

    if int(n_images) < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    out_dir = Path(out_dir)
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(int(n_images)):
        rng = np.random.default_rng([int(seed), i])
        pixels, pts, boxes = make_phantom(rng, size=size, lesion_scale=lesion_scale)
        stem = f"phantom_{i:04d}"
        path = img_dir / f"{stem}.png"
        tmp = img_dir / f".{stem}.tmp.png"
        PILImage.fromarray(np.round(pixels * 255.0).astype(np.uint8), mode="L").save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, path)
        present = {b.label for b in boxes}
        records.append({
            "id": f"phantom/{stem}",
            "path": str(path.resolve()),
            "dataset": "phantom",
            "split": "train",
            "patient_id": stem,
            "width": int(size),
            "height": int(size),
            "pixel_spacing": 358.4 / float(size),
            "view": "PA",
            "normal": len(boxes) == 0,
            "boxes": list(boxes),
            "landmarks": pts.reshape(-1).tolist(),
            "landmark_scheme": "jsrt166",
            "labels": {lab: (1.0 if lab in present else 0.0) for lab in LESION_LABELS},
        })
    manifest = make_manifest(records)
    manifest.save(out_dir / "manifest.parquet")
    return manifest
