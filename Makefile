# Thin wrappers: the README's commands. `make test` is exactly what CI runs (.ci/run).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
TOOLS := .tools/.fetched
CHART_TOOLS := .tools/.chart-tools-built

.PHONY: demo test lint unit bench soak tools kube clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

$(TOOLS): scripts/fetch-tools.sh
	bash scripts/fetch-tools.sh
	@touch $@

# helm-unittest and ct, built from their Go modules (minutes cold; seconds from ~/.cache/azp-agents).
$(CHART_TOOLS): scripts/build-chart-tools.sh
	bash scripts/build-chart-tools.sh
	@touch $@

tools: $(TOOLS) $(CHART_TOOLS)

## demo: set up and run the simulation (the embedded default: emulated Azure DevOps + Kubernetes)
demo: $(STAMP)
	$(BIN)/azp-reconciler simulate --scenario burst

## lint: ruff, mypy --strict, import-linter (the layers of DESIGN.md)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## kube: build (or reuse) the real control plane of the realkube tier (scripts/build-kube.sh)
kube:
	bash scripts/build-kube.sh

## test: set up and run everything CI runs
# The tests start the reconciler as a process hundreds of times; with PYTHONDONTWRITEBYTECODE set (as on
# these machines) each would compile the package from source again (0.2 s of CPU): compile it once.
# Most simulation tests wait on simulated time (a third of a core each), so pytest-xdist runs them on
# $(WORKERS) workers; tests/conftest.py keeps each module, and the realkube tier, on one worker.
WORKERS ?= 3
test: $(STAMP) $(TOOLS) $(CHART_TOOLS) kube lint
	$(BIN)/python -m compileall -q reconciler azp_simulation
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(BIN)/pytest -n $(WORKERS) --durations=15

unit: $(STAMP)
	$(BIN)/pytest tests/unit

## bench: the benchmarks of benchmarks/ (prints a table, writes benchmarks/results.json)
bench: $(STAMP)
	$(BIN)/python -m benchmarks

## soak: a long random simulation with invariants checked after every step
soak: $(STAMP)
	AZP_HYPOTHESIS_EXAMPLES=5000 $(BIN)/python -m benchmarks.soak

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache .hypothesis
