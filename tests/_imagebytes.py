"""Encoded test images in memory, shared by the bad-input and fuzzing tests."""

import io

import numpy as np
from PIL import Image as PILImage


def png_bytes(arr: np.ndarray) -> bytes:
    """``arr`` (uint8 / uint16 [H, W] or uint8 [H, W, 3]) as PNG bytes."""
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray) -> bytes:
    """``arr`` (uint8) as baseline JPEG bytes, quality 90."""
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()
