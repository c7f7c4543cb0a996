"""Shared fixtures: the real datasets in ../shared, tiny generated datasets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _shared_root() -> Path | None:
    candidates = [os.environ.get("CVTRAIN_SHARED"), REPO.parent / "shared"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "datasets").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """``shared/datasets``; skipped when absent, unless CVTRAIN_REQUIRE_SHARED=1 (as in CI)."""
    root = _shared_root()
    if root is None:
        message = "shared datasets not found: set CVTRAIN_SHARED or place them at ../shared"
        if os.environ.get("CVTRAIN_REQUIRE_SHARED") == "1":
            pytest.fail(message + " (CVTRAIN_REQUIRE_SHARED=1)")
        pytest.skip(message)
    return root / "datasets"


@pytest.fixture
def on_shared(shared_datasets):
    """``on_shared(file)``: the override pointing a ready spec or dataset file of ``configs/`` at the shared datasets
    found. Those files write their root as ``../shared/datasets/...``, true only beside a checkout with
    ``../shared``."""

    def override(path: Path) -> dict[str, str]:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        written = document["data"]["root"] if "data" in document else document["root"]
        return {"data.root": str(shared_datasets / written.split("shared/datasets/", 1)[1])}

    return override


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: on a busy 2-core machine two threads wait on each other
    (ten times slower for the segmentation models)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
