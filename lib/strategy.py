"""The DDM's routing strategies, and schedules of them: their names and the grammar ``sample.strategy`` takes.

Apart from the sampler (``lib.sample.ddm`` runs them and says what each does) so that ``lib.config`` can refuse a bad
strategy when a config is built, and the sampler can read its config, without either importing the other.
"""

from __future__ import annotations

import math

STRATEGIES = ("top1", "topk", "full", "sample", "oracle", "expert:<id>")
ROUTED = ("top1", "topk", "full", "sample")  # the strategies that read the router


def parse_strategy(strategy: str) -> tuple[str, int | None]:
    """Split ``expert:<id>`` into ("expert", id); other strategies come back as (name, None).

    Args:
        strategy: one of top1, topk, full, sample, oracle, expert:<id> (one strategy, not a schedule).

    Returns:
        (name, fixed expert id or None).
    """
    if strategy.startswith("expert:"):
        tail = strategy.split(":", 1)[1]
        if not tail.isdigit():
            raise ValueError(f"strategy {strategy!r}: expected expert:<non-negative int>")
        return "expert", int(tail)
    if strategy not in ROUTED + ("oracle",):
        raise ValueError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    return strategy, None


def parse_schedule(schedule: str) -> list[tuple[float, str]]:
    """``first>second@T1>third@T2...`` -> [(inf, first), (T1, second), (T2, third)]: each strategy runs while
    t <= its start time and t > the next one's. A plain strategy is a one-entry schedule.

    Args:
        schedule: a strategy, or strategies joined by ``>``, every one after the first with ``@<t>`` in (0, 1),
            the times strictly decreasing (sampling runs from t = 1 down to 0).

    Returns:
        (start time, strategy) pairs, the first with start time inf.
    """
    parts = schedule.split(">")
    parse_strategy(parts[0])
    entries = [(math.inf, parts[0])]
    for part in parts[1:]:
        name, at, when = part.partition("@")
        if not at:
            raise ValueError(f"schedule {schedule!r}: {part!r} needs a switch time, e.g. {part}@0.5")
        try:
            start = float(when)
        except ValueError:
            raise ValueError(f"schedule {schedule!r}: switch time {when!r} is not a number") from None
        if not 0.0 < start < min(entries[-1][0], 1.0):
            raise ValueError(f"schedule {schedule!r}: switch times must lie in (0, 1) and decrease, got {start}")
        parse_strategy(name)
        entries.append((start, name))
    return entries


def strategy_at(schedule: list[tuple[float, str]], t: float) -> str:
    """The strategy a parsed schedule runs at time t."""
    return [name for start, name in schedule if t <= start][-1]
