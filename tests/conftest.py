import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("FLYTE_LOCAL_CACHE_ENABLED", "false")
os.environ.setdefault("DDM_TRACKING", "0")  # MLflow off unless a test turns it on (tests/test_tracking.py)


@pytest.fixture
def tiny_data_cfg():
    from lib.config import DataConfig

    return DataConfig(num_clips=24, frames=6, height=16, width=16, shard_size=10)


@pytest.fixture(scope="session")
def benchmark_script():
    """Loads ``benchmarks/<name>.py`` as a module (the scripts are not a package), once per session.

    The module is registered in ``sys.modules`` while it executes because its dataclasses look their module up
    while being defined; it is removed again when the session ends.
    """
    loaded = {}

    def load(name: str):
        if name not in loaded:
            path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
            spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]

    yield load
    for module in loaded.values():
        sys.modules.pop(module.__name__, None)
