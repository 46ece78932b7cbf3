"""Flyte tasks: thin typed adapters over ``lib``. Importing any of them installs the per-class literal types.

A task prints its stage's summary line (``ingest: ...``, ``expert-00: trained ...``, the compute accounting) to
stdout with ``print``: it is the run's report to the person at ``pyflyte run``, and tests read it there. ``pyflyte
run`` configures no handler for user loggers, so a ``logging`` INFO record never shows and a WARNING goes to stderr.
Everything else (progress, diagnostics, warnings) goes through ``logging`` in ``lib``.
"""

from tasks.literal_types import install

install()
