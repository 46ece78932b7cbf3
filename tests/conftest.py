import importlib.util
import os

import pytest

os.environ.setdefault("FLYTE_LOCAL_CACHE_ENABLED", "false")
os.environ.setdefault("DDM_TRACKING", "0")  # MLflow off unless a test turns it on (tests/test_tracking.py)


@pytest.fixture
def tiny_data_cfg():
    from lib.config import DataConfig

    return DataConfig(num_clips=24, frames=6, height=16, width=16, shard_size=10)


@pytest.fixture(scope="session")
def benchmark_script():
    """``benchmarks/<name>.py`` as a module (``benchmarks`` is a package; the scripts' machinery is in lib/)."""
    return lambda name: importlib.import_module(f"benchmarks.{name}")
