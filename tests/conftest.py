import os

import pytest

os.environ.setdefault("FLYTE_LOCAL_CACHE_ENABLED", "false")


@pytest.fixture
def tiny_data_cfg():
    from lib.config import DataConfig

    return DataConfig(num_clips=24, frames=6, height=16, width=16, shard_size=10)
