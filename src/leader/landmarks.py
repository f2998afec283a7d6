"""JSRT/SCR 166-point contour scheme -> named anatomical landmarks.

The ``jsrt166`` scheme (HybridGNet, derived from the SCR masks of the JSRT database;
``shared/data/real-cxr/MANIFEST.md`` §3) stores five closed organ contours as 166 ``(x, y)``
points in pixels of the stored image, top-left origin, ``x`` to the right, ``y`` down:

====================  ===========  ======
organ                 points       count
====================  ===========  ======
``right_lung``        0 - 43       44
``left_lung``         44 - 93      50
``heart``             94 - 119     26
``right_clavicle``    120 - 142    23
``left_clavicle``     143 - 165    23
====================  ===========  ======

"Right"/"left" are the *patient's* sides; on a frontal PA radiograph the patient's right is on
the **image left** (small ``x``).

The paper's zero-shot anatomy protocol (§5, Fig. 3) extracts 224² patches around ten
anatomical landmarks. :func:`named_landmarks` derives ten such landmarks from the contours by
simple geometric rules (extremes of each contour), which makes them robust to where a
contour's point sequence starts and to small contour noise. The rules were checked on the
eight real JSRT landmark files of the test pack.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "JSRT166_ORGANS",
    "JSRT166_NUM_POINTS",
    "LANDMARK_NAMES",
    "as_points",
    "organ_points",
    "named_landmarks",
    "lung_bbox",
]

#: organ name -> slice into the ``[166, 2]`` point array (patient's right/left).
JSRT166_ORGANS: dict[str, slice] = {
    "right_lung": slice(0, 44),
    "left_lung": slice(44, 94),
    "heart": slice(94, 120),
    "right_clavicle": slice(120, 143),
    "left_clavicle": slice(143, 166),
}

#: Number of points in the ``jsrt166`` scheme.
JSRT166_NUM_POINTS = 166

#: The ten named landmarks, in a fixed order (also the order of :func:`named_landmarks`).
LANDMARK_NAMES: tuple[str, ...] = (
    "right_lung_apex",
    "left_lung_apex",
    "right_costophrenic_angle",
    "left_costophrenic_angle",
    "right_heart_border",
    "heart_apex",
    "right_clavicle_medial",
    "left_clavicle_medial",
    "right_clavicle_lateral",
    "left_clavicle_lateral",
)


def as_points(points) -> np.ndarray:
    """Return ``points`` as a float64 ``[166, 2]`` array of ``(x, y)`` pixels.

    Accepts the flattened ``(332,)`` layout of the manifest's ``landmarks`` column / the
    HybridGNet ``.npy`` files, or an already shaped ``[166, 2]`` array-like.

    Raises:
        ValueError: wrong number of points, or non-finite coordinates.
    """
    a = np.asarray(points, dtype=np.float64)
    if a.ndim == 1 and a.size == 2 * JSRT166_NUM_POINTS:
        a = a.reshape(-1, 2)
    if a.shape != (JSRT166_NUM_POINTS, 2):
        raise ValueError(
            f"jsrt166 landmarks must have shape ({JSRT166_NUM_POINTS}, 2) or "
            f"({2 * JSRT166_NUM_POINTS},), got {a.shape}"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError("jsrt166 landmarks contain NaN or infinite coordinates")
    return a


def organ_points(points, organ: str) -> np.ndarray:
    """Contour of one organ: float64 ``[n, 2]`` ``(x, y)`` pixels (see :data:`JSRT166_ORGANS`).

    Raises:
        KeyError: unknown organ name.
        ValueError: see :func:`as_points`.
    """
    if organ not in JSRT166_ORGANS:
        raise KeyError(f"unknown jsrt166 organ {organ!r}; known: {sorted(JSRT166_ORGANS)}")
    return as_points(points)[JSRT166_ORGANS[organ]]


def lung_bbox(points) -> tuple[float, float, float, float]:
    """Bounding box ``(x0, y0, x1, y1)`` (pixels) of both lung contours (points 0-93)."""
    p = as_points(points)[0:94]
    return (float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max()))


def _clavicle_ends(c: np.ndarray, medial_is_larger_x: bool) -> tuple[np.ndarray, np.ndarray]:
    """Medial and lateral end of a clavicle contour.

    The two ends are the extremes of the contour along its principal (long) axis; the one
    closer to the midline (larger ``x`` for the right clavicle, smaller for the left) is medial.
    """
    centred = c - c.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axis = vt[0]
    proj = centred @ axis
    a, b = c[int(np.argmin(proj))], c[int(np.argmax(proj))]
    if (a[0] > b[0]) == medial_is_larger_x:
        return a, b
    return b, a


def named_landmarks(points) -> dict[str, tuple[float, float]]:
    """Ten named anatomical landmarks from a ``jsrt166`` contour set.

    Args:
        points: ``[166, 2]`` (or flattened ``(332,)``) ``(x, y)`` pixels of the stored image.

    Returns:
        ``{name: (x, y)}`` in the same pixel frame, keys in :data:`LANDMARK_NAMES` order.
        Every landmark is one of the contour points (no interpolation). Rules:

        * ``right_lung_apex`` / ``left_lung_apex``: point of minimum ``y`` of each lung.
        * ``right_costophrenic_angle``: right lung ``argmax(y - x)`` (lowest, most lateral =
          image-left); ``left_costophrenic_angle``: left lung ``argmax(y + x)``.
        * ``right_heart_border``: heart point of minimum ``x`` (right atrial border).
        * ``heart_apex``: heart ``argmax(x + y)`` - the lower tip on the patient's left
          (image lower right).
        * clavicle ends: the two extremes along each clavicle's principal axis; the medial end
          is the one nearer the midline (right clavicle: larger ``x``; left: smaller ``x``).

    Raises:
        ValueError: wrong shape or non-finite coordinates.
    """
    p = as_points(points)
    rl = p[JSRT166_ORGANS["right_lung"]]
    ll = p[JSRT166_ORGANS["left_lung"]]
    h = p[JSRT166_ORGANS["heart"]]
    rc = p[JSRT166_ORGANS["right_clavicle"]]
    lc = p[JSRT166_ORGANS["left_clavicle"]]
    rc_med, rc_lat = _clavicle_ends(rc, medial_is_larger_x=True)
    lc_med, lc_lat = _clavicle_ends(lc, medial_is_larger_x=False)
    found = {
        "right_lung_apex": rl[int(np.argmin(rl[:, 1]))],
        "left_lung_apex": ll[int(np.argmin(ll[:, 1]))],
        "right_costophrenic_angle": rl[int(np.argmax(rl[:, 1] - rl[:, 0]))],
        "left_costophrenic_angle": ll[int(np.argmax(ll[:, 1] + ll[:, 0]))],
        "right_heart_border": h[int(np.argmin(h[:, 0]))],
        "heart_apex": h[int(np.argmax(h[:, 0] + h[:, 1]))],
        "right_clavicle_medial": rc_med,
        "left_clavicle_medial": lc_med,
        "right_clavicle_lateral": rc_lat,
        "left_clavicle_lateral": lc_lat,
    }
    return {name: (float(found[name][0]), float(found[name][1])) for name in LANDMARK_NAMES}
