"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def real_pack() -> Path:
    """Root of the real-cxr data pack (used in place, never copied); skips if absent."""
    root = (Path(__file__).parents[1] / ".." / "shared" / "data" / "real-cxr").resolve()
    if not root.is_dir():
        pytest.skip(f"real-cxr data pack not found at {root}")
    return root


@pytest.fixture(scope="session")
def real_pack_large() -> Path:
    """Root of the real-cxr-large pack (NIH ChestX-ray14 + the COVID-19 image data collection,
    published layouts, images downscaled to 512 px; used in place, never copied); skips if
    absent."""
    root = (Path(__file__).parents[1] / ".." / "shared" / "data" / "real-cxr-large").resolve()
    if not root.is_dir():
        pytest.skip(f"real-cxr-large data pack not found at {root}")
    return root
