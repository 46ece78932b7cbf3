"""Wall time per stage and one-line progress, as every experiment prints them."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


def say(text: str) -> None:
    print(text, flush=True)


class StageTimer:
    """Wall time per named stage (a stage entered twice adds up)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.seconds[name] = self.seconds.get(name, 0.0) + dt
            say(f"[time] {name}: {dt:.1f} s")

    def total(self) -> float:
        return time.perf_counter() - self.start
