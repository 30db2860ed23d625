# Two commands do all set-up: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNS ?= $(or $(POISONLENS_RUNS),runs)

.PHONY: run test test-fast lint bench gpu-check paper-check sample screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

PORT ?= 8501

# Headless: no first-run e-mail prompt; open the printed URL (http://localhost:$(PORT)).
run: $(STAMP)
	$(BIN)/poisonlens ui --runs-dir $(RUNS) --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench.epoch
	$(BIN)/python -m bench.select --epoch-share

# On a CUDA machine: ResNet-18, the whole of CIFAR-10, EPIC, 2 epochs (NGPUS>1: under torchrun).
NGPUS ?=
gpu-check: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH bash bench/gpu_check.sh $(NGPUS)

# On a CUDA machine: a cut of the whole-of-CIFAR-10 grid with ResNet-18 (surrogate, benchmark
# targets, gradient matching, evaluate with clean/none/EPIC-0.2/random-0.2), about 10 minutes.
paper-check: $(STAMP)
	PL=$(CURDIR)/$(BIN)/poisonlens bash bench/paper_check.sh

screenshots: $(STAMP)
	POISONLENS_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest tests/test_dashboard_browser.py

sample: $(STAMP)
	$(BIN)/python -m sample_data.make_sample

clean:
	rm -rf $(VENV) .pytest_cache
