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

# The last step puts the repository root on the venv's path (a .pth file): the `ddm-sample` command and scripts
# saved outside the repository import lib/ from here.
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(PIP_TORCH_ARGS)
	$(PY) -m pip install -q -c constraints.txt ".[dev]"
	$(PY) -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "ddm_flyte_repo.pth").write_text(str(pathlib.Path.cwd()) + "\n")'
	touch $@

# Flyte's local cache (under $$HOME/.flyte) points at task outputs: stage folders under the config's output_dir and
# tables in temp folders. Keeping both the temp folders and the cache inside output_dir means a cache hit never
# returns a path that vanished with /tmp, and deleting one run's output_dir resets its cache with it (a cache kept
# elsewhere would hand back the deleted folders). Decks land there too (.flyte-tmp/**/deck.html).
OUTPUT_DIR = $$($(PY) -c "import sys; from lib.config import load_config; print(load_config(sys.argv[1]).output_dir)" $(CONFIG))

run: install
	@out=$(OUTPUT_DIR) && mkdir -p "$$out/.flyte-tmp" "$$out/.flyte-home" && out=$$(cd "$$out" && pwd) && \
	start=$$(date +%s) && TMPDIR="$$out/.flyte-tmp" HOME="$$out/.flyte-home" \
	$(VENV)/bin/pyflyte run workflows/pipeline.py pipeline --cfg $(CONFIG) && \
	echo "total time: $$(( $$(date +%s) - start )) s"

# The MLflow UI on a run's local tracking store (every execution, every model's curves): `make ui CONFIG=...`.
# Artifacts resolve against the store's own mlartifacts folder (lib.tracking), so a moved output_dir still shows them.
ui: install
	@echo "runs page: http://127.0.0.1:5000/#/experiments/1/runs"
	$(VENV)/bin/mlflow ui --backend-store-uri "sqlite:///$(OUTPUT_DIR)/mlflow.db" \
		--artifacts-destination "$(OUTPUT_DIR)/mlartifacts"

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint Dockerfile
	FLYTE_LOCAL_CACHE_ENABLED=false $(PY) -m pytest --durations=20

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint Dockerfile

clean:
	rm -rf $(VENV) outputs
