"""Shared fixtures: the real HAM10000 copy (via SKIN_TF_TEST_DATA) and a tiny synthetic copy."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_dataverse import FakeDataverse, Sample, make_sample, serving
from tests.fakes import make_fake_ham10000

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """The real HAM10000 folder named by SKIN_TF_TEST_DATA; skips (with the reason) when unset."""
    value = os.environ.get("SKIN_TF_TEST_DATA")
    if not value:
        pytest.skip("real-data test: set SKIN_TF_TEST_DATA=../shared/data/ham10000 (CI sets it)")
    root = Path(value).expanduser().resolve()
    if not (root / "HAM10000_metadata.csv").is_file():
        pytest.fail(f"SKIN_TF_TEST_DATA={value} has no HAM10000_metadata.csv: fix the path")
    return root


@pytest.fixture(scope="session")
def real_frame(real_data_root: Path):
    """read_metadata() of the real data, read once per session."""
    from skin_tf.data.ham10000 import read_metadata

    return read_metadata(real_data_root)


@pytest.fixture()
def fake_root(tmp_path: Path) -> Path:
    """A tiny synthetic HAM10000 copy (single images/ folder, 4 images per class, 2 per lesion)."""
    return make_fake_ham10000(tmp_path / "ham", per_class=4)


@pytest.fixture(scope="module")
def sample(real_data_root: Path) -> Sample:
    """Dataverse-style archives of a few real images (tests.fake_dataverse), one per module."""
    return make_sample(real_data_root)


@pytest.fixture()
def fake(sample: Sample) -> Iterator[FakeDataverse]:
    """A fake Dataverse server on 127.0.0.1 serving `sample`, for one test."""
    with serving(sample) as fake:
        yield fake
