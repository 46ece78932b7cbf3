"""Flyte tasks: thin typed adapters over ``lib``. Importing any of them installs the per-class literal types."""

from tasks.literal_types import install

install()
