"""Dataclass literal types are built once per class, and are the ones flytekit would build."""

from flytekit.core.type_engine import DataclassTransformer, TypeEngine

import tasks  # noqa: F401  (installs the per-class store, as any task import does)
from lib.config import ExpertConfig, RunConfig
from lib.train.specs import ExpertSpec
from tasks import literal_types


def test_a_dataclass_literal_type_is_built_once_and_equals_flytekits_own():
    first = TypeEngine.to_literal_type(RunConfig)
    assert TypeEngine.to_literal_type(RunConfig) is first  # served from the store
    fresh = literal_types._build(DataclassTransformer(), RunConfig)
    assert fresh is not first and fresh.to_flyte_idl() == first.to_flyte_idl()
    spec = TypeEngine.to_literal_type(ExpertSpec)
    assert spec.to_flyte_idl() == literal_types._build(DataclassTransformer(), ExpertSpec).to_flyte_idl()
    assert TypeEngine.to_literal_type(list[ExpertConfig]).collection_type is not None  # containers still work
