# Two commands do all set-up on a fresh machine: `make run` (the pipeline on configs/tiny.yaml) and `make test`.
# torch is installed first and explicitly: the CPU wheel by default. GPU machines pass the CUDA build they need,
# e.g. `make run TORCH_SPEC="torch==2.13.0" PIP_TORCH_ARGS="--index-url <your CUDA wheel index>"`.
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/tiny.yaml
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
export FLYTE_SDK_LOGGING_LEVEL ?= 40

.PHONY: run test lint install clean ui

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(PIP_TORCH_ARGS)
	$(PY) -m pip install -q ".[dev]"
	touch $@

# Flyte's local cache (under $$HOME/.flyte) points at task outputs: stage folders under outputs/ and tables in temp
# folders. Keeping the temp folders and the cache itself under outputs/ means a cache hit never returns a path that
# vanished with /tmp, and deleting outputs/ resets cache and outputs together.
run: install
	@mkdir -p outputs/.flyte-tmp outputs/.flyte-home; start=$$(date +%s); \
	TMPDIR=$(CURDIR)/outputs/.flyte-tmp HOME=$(CURDIR)/outputs/.flyte-home \
	$(VENV)/bin/pyflyte run workflows/pipeline.py pipeline \
		--cfg $(CONFIG) && \
	echo "total time: $$(( $$(date +%s) - start )) s"

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint Dockerfile
	FLYTE_LOCAL_CACHE_ENABLED=false $(PY) -m pytest

# The MLflow UI on a run's local tracking store (every execution, every model's curves): `make ui CONFIG=...`.
ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri "sqlite:///$$($(PY) -c "import sys; from lib.config import load_config; print(load_config(sys.argv[1]).output_dir)" $(CONFIG))/mlflow.db"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint Dockerfile

clean:
	rm -rf $(VENV) outputs
