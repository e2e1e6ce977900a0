# The two commands of the README:
#   make run    set everything up and run the default pipeline (dvc repro)
#   make test   set everything up and run the tests
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export HF_HUB_OFFLINE = 1
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export DVC_NO_ANALYTICS = 1
export MLFLOW_DISABLE_TELEMETRY = true
# glibc's allocator returns Mamba's many mid-sized scan buffers to the kernel and maps them again
# each step: forward+backward past ~32 tokens ran 5x slower (length 64, batch 64: 3.5 s -> 0.65 s
# with these).  glibc reads them at process start only, so they are set here, not in Python.
export MALLOC_MMAP_THRESHOLD_ = 1073741824
export MALLOC_TRIM_THRESHOLD_ = 1073741824

.PHONY: setup chromium run run-full run-flow test test-fast test-training bench ui serve clean

# What `make run` needs; the tests also need Chromium (the browser tests of the report and MLflow).
setup: $(VENV)/.installed .dvc/plots/offline.html

# Debian's Chromium, for the test that opens the MLflow UI headless (no-op when present).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# torch goes in first, by exact version: pip then takes the CPU wheel on this machine's disk,
# where a plain `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	# mamba-lens declares an unpinned transformer-lens (pip would take 4, which drops the hooks the
	# engine needs): installed without its requirements, which pyproject.toml lists instead.
	$(BIN)/pip install --quiet --no-deps mamba-lens==0.0.4
	touch $@

# DVC's plots page with vega inlined (from the npm registry), so `dvc plots show` works offline.
.dvc/plots/offline.html: tools/plots_template.py
	$(BIN)/python tools/plots_template.py $@

# The default pipeline: DVC's stale stages run in one warm process and are recorded in DVC
# (`circuitflow repro`; `dvc repro` gives the same bytes, a process per stage).
run: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/circuitflow repro

# The papers' full settings (params-full.yaml) as a DVC experiment on top of params.yaml.
run-full: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m flows.local_server $(BIN)/dvc exp run $$($(BIN)/python tools/params_overrides.py params-full.yaml)

# The same DAG as one Prefect flow, without DVC.
run-flow: setup
	$(BIN)/circuitflow run

# Full training runs (the organisms' and SIIT cases' accuracy targets, minutes each: 10 to 30 minutes
# together) and Shi et al.'s tests at the paper's full settings on tracr-reverse stay out of
# `make test`, which must finish in 10 minutes on 2 cores; the default pipeline trains the organisms
# and runs the tests anyway.  Run them with `make test-training`.
TRAINING = tests/test_organisms.py::test_full_training_reaches_the_accuracy_target \
	tests/test_hypothesis_tests.py::test_tracr_ground_truth_at_the_paper_defaults \
	tests/test_organisms.py::test_full_induction_training_learns_induction_heads \
	tests/test_siit.py::test_trained_reverse_resampling_non_circuit_nodes_changes_under_one_percent \
	tests/test_siit.py::test_each_tracr_case_trains_to_the_target \
	tests/test_siit.py::test_ioi_case_trains_to_95_percent
ORGANISM_TRAINING = $(addprefix --deselect ,$(TRAINING))

# The venv's bin first on PATH: the end-to-end tests run `circuitflow` and `dvc` as a user would.
TEST_PATH = PATH="$(abspath $(BIN)):$$PATH"

test: setup chromium
	$(TEST_PATH) $(BIN)/python -m pytest -q --durations=15 $(ORGANISM_TRAINING)

test-training: setup
	$(TEST_PATH) $(BIN)/python -m pytest -q $(TRAINING)

test-fast: setup chromium
	$(TEST_PATH) $(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/bench_patching.py
	$(BIN)/python benchmarks/bench_store.py

ui: setup
	$(BIN)/circuitflow ui

# Scheduled deployments: needs a Prefect server with its scheduler, e.g. `prefect server start`
# in another terminal and PREFECT_API_URL=http://127.0.0.1:4200/api here.
serve: setup
	$(BIN)/circuitflow serve

clean:
	rm -rf data mlflow.db mlruns .dvc/cache .dvc/tmp
