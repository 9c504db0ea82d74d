"""Fixtures for the data tests: LUNA16-layout folders built in tmp_path (see luna_phantoms)."""

from __future__ import annotations

import pytest
from luna_phantoms import write_luna


@pytest.fixture(scope="session")
def luna_prepared(tmp_path_factory) -> dict:
    """A LUNA16 folder with its cache prepared (shared, read-only: tests that change it make their own)."""
    import warnings

    from noduleflow.data import ScanCache, prepare

    info = write_luna(tmp_path_factory.mktemp("luna"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = prepare(info["root"], workers=1, progress=False)
    return {**info, "cache": ScanCache(summary.cache.root), "summary": summary}


@pytest.fixture
def luna(tmp_path) -> dict:
    return write_luna(tmp_path / "luna")
