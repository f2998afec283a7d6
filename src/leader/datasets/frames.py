"""Annotation frames: the image size in which each dataset publishes its boxes and points,
and the map from that frame to the image **as stored** (the file at ``path``).

Public copies of these datasets are often downscaled (torchxrayvision's 512-px NIH, the
``real-cxr-large`` pack, Kaggle PNG conversions of VinDr), while the annotation files keep
their published coordinates. Every reader therefore takes the stored size from the image
header (:func:`leader.datasets._common.read_size`: no pixel decode; with
``check_files=False`` from the reader's ``stored_size`` option or the documented release
size) and maps each axis separately with :func:`frame_scale`::

    x_stored = x_published * stored_width / frame_width
    y_stored = y_published * stored_height / frame_height

====================  ==========================================================  =====================
dataset               published frame (source)                                    annotation
====================  ==========================================================  =====================
``nih``               1024 x 1024 PNG of the release (NIH README; BR-06)          boxes x, y, w, h
``rsna``              1024 x 1024 DICOM (Kaggle data page; BR-07)                 boxes x, y, w, h
``chestx-det``        1024 x 1024 PNG (ChestX-Det README)                         boxes x1 y1 x2 y2,
                                                                                  polygons
``node21``            1024 x 1024 ``.mha`` (NODE21 data page: preprocessed to     boxes x, y, w, h
                      1024 x 1024)
``tbx11k``            COCO ``images[].width/height`` (512 x 512 in the release;   boxes x, y, w, h
                      512 when the JSON omits them)
``vindr``             the original DICOM's Columns x Rows (VinDr-CXR paper;       boxes x_min ... y_max
                      BR-09a)
``jsrt``              2048 x 2048 raw original (JSRT ``CLNDAT_EN.txt``,           nodule centre +
                      0.175 mm/px)                                                diameter (mm)
``jsrt`` landmarks    1024 x 1024 HybridGNet PNG (HybridGNet repository)          166 contour points
``covid-ieee8023``    COCO ``images[].width/height`` of each annotated image      lung boxes x, y, w, h
                      (imageannotation.ai lung-box JSON)                          (anatomy)
``covid-ieee8023``    the stored image (V7 Labs masks are resized with it)        lung masks
``siim``              1024 x 1024 DICOM (SIIM-ACR challenge)                      RLE masks
====================  ==========================================================  =====================

Pixel coordinates are x = column, y = row, origin at the top-left corner of the top-left
pixel (so a scale maps a box edge to a box edge). A box in millimetres is
:meth:`leader.manifest.Box.to_mm` / :meth:`leader.manifest.Manifest.boxes_mm`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["ANNOTATION_FRAMES", "frame_scale", "map_xywh", "map_points", "aspect_differs", "assumed_size"]

#: dataset (or ``dataset:kind``) -> the published frame, as documented above.
ANNOTATION_FRAMES: dict[str, str] = {
    "nih": "1024 x 1024",
    "rsna": "1024 x 1024",
    "chestx-det": "1024 x 1024",
    "node21": "1024 x 1024",
    "tbx11k": "COCO images[].width x height (512 x 512 when absent)",
    "vindr": "original DICOM Columns x Rows",
    "jsrt": "2048 x 2048 (nodule centres)",
    "jsrt:landmarks": "1024 x 1024 (HybridGNet)",
    "covid-ieee8023:anatomy_boxes": "COCO images[].width x height of the annotated image",
    "covid-ieee8023:lung_mask": "stored image",
    "siim:pneumothorax_rle": "1024 x 1024",
}


def _positive(v, name: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {v!r}") from None
    if not (math.isfinite(f) and f > 0):
        raise ValueError(f"{name} must be a positive number, got {v!r}")
    return f


def frame_scale(stored: Sequence[float], frame: Sequence[float]) -> tuple[float, float]:
    """``(sx, sy)`` = stored ``(width, height)`` / frame ``(width, height)``, per axis.

    Both sizes are in pixels (width = columns, height = rows). E.g. an NIH box published in
    the 1024 x 1024 frame on an image stored at 512 x 512: ``frame_scale((512, 512), (1024,
    1024)) == (0.5, 0.5)``.

    Raises:
        ValueError: a size that is not a positive finite number (names which).
    """
    sw, sh = _positive(stored[0], "stored width"), _positive(stored[1], "stored height")
    fw, fh = _positive(frame[0], "frame width"), _positive(frame[1], "frame height")
    return sw / fw, sh / fh


def assumed_size(stored_size: float | Sequence[float] | None, frame: float) -> tuple[float, float]:
    """The stored ``(width, height)`` in pixels that a reader assumes when it opens no image
    (``check_files=False``): its ``stored_size`` option -- one number for a square image or
    ``(width, height)`` -- else the square published ``frame`` (e.g. 1024 for ChestX-Det and
    NODE21). No check here: :func:`frame_scale` refuses a size that is not positive."""
    if stored_size is None:
        return float(frame), float(frame)
    if isinstance(stored_size, (tuple, list)):
        return float(stored_size[0]), float(stored_size[1])
    return float(stored_size), float(stored_size)


def map_xywh(x: float, y: float, w: float, h: float, scale: Sequence[float]) -> tuple[float, float, float, float]:
    """A published ``(x, y, w, h)`` box (top-left corner + size) as stored-image
    ``(x0, y0, x1, y1)`` with ``scale = (sx, sy)`` from :func:`frame_scale`."""
    sx, sy = float(scale[0]), float(scale[1])
    return x * sx, y * sy, (x + w) * sx, (y + h) * sy


def map_points(points, scale: Sequence[float]) -> np.ndarray:
    """``float64 [P, 2]`` (x, y) points (any shape that flattens to 2P values) scaled per
    axis into the stored image."""
    a = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return a * np.array([float(scale[0]), float(scale[1])])


def aspect_differs(stored: Sequence[float], frame: Sequence[float], tol: float = 0.02) -> bool:
    """True when the stored image and the frame differ in aspect ratio by more than ``tol``
    (relative): the two scales disagree, so the stored image is not a plain resize of the
    annotated one (cropped or padded upstream) and mapped boxes may be off."""
    sx, sy = frame_scale(stored, frame)
    return abs(sx - sy) > tol * max(sx, sy)
