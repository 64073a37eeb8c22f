"""Shared fixtures. Tests run under pytest-trio's trio_mode: async tests need no marker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT.parent / "shared" / "vectors" / "hypercore-crypto.json"
LOCAL_VECTORS = ROOT / "tests" / "vectors" / "hypercore-crypto.json"

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("default")


@pytest.fixture(scope="session")
def hypercore_vectors() -> dict[str, Any]:
    """The vectors produced by the real Hypercore (a copy is kept in tests/vectors/)."""
    path = VECTORS if VECTORS.exists() else LOCAL_VECTORS
    data: dict[str, Any] = json.loads(path.read_text())
    return data
