"""Flyte tasks: thin typed adapters over ``lib``. Importing any of them installs the per-class literal types.

A task reports its stage's summary line (``ingest: ...``, ``expert-00: trained ...``, the compute accounting) on the
``tasks`` logger at INFO: it is the run's report to the person at ``pyflyte run``, so that logger writes plain
messages to stdout (``pyflyte run`` configures no handler for user loggers, where an INFO record would never show).
A deployment that wants them elsewhere, or not at all, reconfigures the ``tasks`` logger like any other. Progress,
diagnostics and warnings go through ``lib``'s own loggers.
"""

import logging
import sys

from tasks.literal_types import install


class _Stdout(logging.Handler):
    """Writes each message to the stdout of the moment, as ``print`` would: pytest and notebooks swap ``sys.stdout``
    after import, and a handler holding the stream of import time would write past them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno > logging.INFO:  # a warning says so, and where it came from
                text = f"{record.levelname} {record.name}: {text}"
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except Exception:  # a closed or broken stdout must not fail the task that reports
            self.handleError(record)


_report = logging.getLogger("tasks")
if not any(isinstance(h, _Stdout) for h in _report.handlers):
    _report.addHandler(_Stdout())
    _report.setLevel(logging.INFO)
    _report.propagate = False  # the root's handlers (if a user set some) would print every line twice
install()
