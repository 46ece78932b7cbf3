"""One Flyte literal type per dataclass, built once per process instead of once per task signature.

flytekit (1.16) rebuilds a dataclass's literal type, JSON schema included (mashumaro), every time a task interface
names the dataclass; ``RunConfig`` and its sections appear in dozens of interfaces and are rebuilt each time a task
is defined and called. Measured on the pipeline's import: about a third of it (14-18 s -> 10-11.5 s on a busy
2-core machine). A dataclass's literal type depends only on the class, so it is kept per class here.
"""

from typing import Any

from flytekit.core.type_engine import DataclassTransformer

_build = DataclassTransformer.get_literal_type
_by_class: dict[Any, Any] = {}


def _get_literal_type(self: DataclassTransformer, t: Any) -> Any:
    try:
        return _by_class[t]
    except KeyError:
        pass
    except TypeError:  # an unhashable annotation: build it every time, as flytekit does
        return _build(self, t)
    literal = _by_class[t] = _build(self, t)
    return literal


def install() -> None:
    """Route flytekit's dataclass literal types through the per-class store (idempotent)."""
    DataclassTransformer.get_literal_type = _get_literal_type
