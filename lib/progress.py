"""Progress bars for the long loops (training, encoding, embedding, sampling, feature extraction).

Why a module of its own: every loop must follow one rule about where bars appear. They go to stderr and only where a
person watches: on a terminal, not under CI, not in tests (pytest's captured stderr is no terminal) and not in a Flyte
pod (no terminal either, where the loops' own log lines every N steps are what the console shows). ``DDM_PROGRESS=1``
forces bars on (e.g. under ``script`` or a notebook), ``DDM_PROGRESS=0`` forces them off. A finished bar is erased
(``leave=False``): the stage's one summary line stays the record.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

ENV = "DDM_PROGRESS"


def bars_enabled() -> bool:
    """True when bars should be drawn: ``DDM_PROGRESS`` if set, else a terminal on stderr outside CI."""
    forced = os.environ.get(ENV)
    if forced is not None:
        return forced.strip().lower() not in ("", "0", "false", "no", "off")
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress(
    iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str, unit: str = "it", initial: int = 0
) -> tqdm:
    """A tqdm bar on stderr under the module's rule (a silent pass-through when bars are off); ``initial``: work
    already done (a resumed run), left out of the rate and the ETA."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=not bars_enabled(), leave=False,
                file=sys.stderr, smoothing=0.1)  # fmt: skip
