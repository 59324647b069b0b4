# Two commands do everything on a fresh machine:
#   make demo   -> create .venv, install, run the default compression job (Fashion-MNIST, VGG)
#   make test   -> create .venv, install, run the test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST_DIR := /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench bench-quick bench-budget bench-filters data browser clean

# constraints.txt pins the CPU torch wheel (pyproject allows any recent torch, for other users).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

# Debian's dataset-fashion-mnist package, where this machine lets us install it; otherwise the
# run falls back to scikit-learn's digits and says so.
data:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) || \
	    echo "note: could not install dataset-fashion-mnist; the demo will use scikit-learn digits"; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	    sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	    echo "note: could not install dataset-fashion-mnist; the demo will use scikit-learn digits"; \
	  else \
	    echo "note: $(FMNIST_DIR) missing and no root to install dataset-fashion-mnist; the demo will use scikit-learn digits"; \
	  fi; \
	fi

# Debian's chromium, where this machine lets us install it: the report's test opens report.html in
# headless Chromium (and scripts/report_screenshot.py takes the README's screenshot); without it that
# test is skipped and says so.
browser:
	@if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1)) || \
	    echo "note: could not install chromium; the report's browser test will be skipped"; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	    sudo apt-get install -y -qq chromium >/dev/null 2>&1 || \
	    echo "note: could not install chromium; the report's browser test will be skipped"; \
	  else \
	    echo "note: no chromium and no root to install it; the report's browser test will be skipped"; \
	  fi; \
	fi

demo: $(STAMP) data
	$(BIN)/qubocompress demo

# ruff (lint and format) and import-linter (the layer contract in pyproject.toml) first: cheap, and a
# broken contract fails the run as a failing test does.
test: $(STAMP) browser
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# The solver benchmark (docs/benchmarks.md): bench-quick takes a few minutes, bench the full sweep.
bench-quick: $(STAMP)
	$(BIN)/qubocompress bench --quick --out runs/bench-quick

bench: $(STAMP)
	$(BIN)/qubocompress bench --out runs/bench

# The budget QUBOs at 16/24/32x: the default route (sa + polish) against random + polish and the MILP.
bench-budget: $(STAMP)
	$(BIN)/qubocompress bench --formulation budget --polish --solvers sa,random,exact --seeds 10 --out runs/bench-budget-route

# The filters QUBOs (shipped in src/qubocompress/bench/data/filters/) at 16/24/32x: every solver's reads raw and
# polished against SCIP's MIQP reference (its time to proof, or its gap at the limit, and to its best incumbent).
bench-filters: $(STAMP)
	$(BIN)/qubocompress bench --formulation filters --polish --quick --solvers sa,tabu,greedy,sqa,sb,random,exact --out runs/bench-filters

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .hypothesis
