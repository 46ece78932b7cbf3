"""Entry points that measure and print: ``python benchmarks/<name>.py --help``. Their machinery lives in
``lib/`` (``lib.experiment`` for everything that trains and scores models); ``make install`` puts the repository
root on the venv's path, so they import it from any working directory."""
