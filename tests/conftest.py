"""Shared test settings: no stray tracing, no third-party plugins leaking between tests."""

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.pop("FUNCTIONFUSE_TRACE", None)


@pytest.fixture
def file_storage(tmp_path):
    """A file storage in a fresh folder."""
    from functionfuse.storage import storage_factory

    return storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})
