"""Flyte workflows: composition only, the logic lives in lib/ and the task adapters in tasks/."""

import sys
from pathlib import Path

from lib.config import cli_config_error

# pyflyte reads `--cfg file.yaml` before any task runs and reports a typo in it as a 200-line traceback; a user
# should read one line naming the file, the key or the line and column instead.
if Path(sys.argv[0]).name == "pyflyte" and (_problem := cli_config_error(sys.argv)):
    sys.exit(f"error: {_problem}")
