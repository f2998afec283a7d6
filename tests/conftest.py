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
