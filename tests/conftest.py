"""Shared pytest fixtures."""
from __future__ import annotations

import os

import pytest

from tests.fixtures import make_all


@pytest.fixture(scope="session", autouse=True)
def _data_cache_dir(tmp_path_factory):
    """Keep harness.data's preload cache out of the home folder during tests (unless one is set)."""
    if "SEGVAE_CACHE_DIR" in os.environ:
        yield os.environ["SEGVAE_CACHE_DIR"]
        return
    path = tmp_path_factory.mktemp("segvae-cache")
    os.environ["SEGVAE_CACHE_DIR"] = str(path)
    try:
        yield str(path)
    finally:
        os.environ.pop("SEGVAE_CACHE_DIR", None)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A tiny synthetic pets + MNIST + CIFAR-10 (png) tree in the real layouts (tests/fixtures.py)."""
    return make_all(tmp_path_factory.mktemp("data"))
