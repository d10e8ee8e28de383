"""Shared fixtures: every test gets its own cache directory, so no test reads another's cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# No end-of-run report (seconds of drawing per run) except in the tests that check it: they call
# monkeypatch.delenv("CNNLAB_REPORT") or write reports explicitly. Set at import, so module-scoped
# fixtures' runs (and subprocesses) see it too.
os.environ["CNNLAB_REPORT"] = "0"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))

