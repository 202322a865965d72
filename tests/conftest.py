import os
import sys
from pathlib import Path

import pytest

# Tests share 2 cores with each other: keep torch single-threaded unless a test says otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Snakemake rules call the `mae` console script of this environment.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
