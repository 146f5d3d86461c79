"""Shared test helpers: where the real-audio fixtures live, and tiny configs."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"


def fixtures_or_skip(*parts: str) -> Path:
    """Path under ../shared/fixtures, or skip the test when a fresh clone has no ../shared."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"fixture {path} absent (../shared/fixtures is only beside the CI checkout)")
    return path
