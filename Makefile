# lightning-lrbs: every target sets up what it needs on a fresh machine.
#   make test   - the whole test suite against the installed wheel (what CI runs)
#   make demo   - train the MNIST CNN with BatchScalingCallback
#   make lint   - ruff + mypy --strict
#   make bench  - benchmarks (not part of make test)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Real MNIST: the read-only copy beside the checkout when there is one, else ./data (downloaded on first use).
DATA_DIR ?= $(if $(wildcard ../shared/data/MNIST/raw/train-images-idx3-ubyte.gz),../shared/data,data)
PYTEST_ARGS ?=

.PHONY: venv install test lint demo sweep bench clean

venv: $(VENV)/.deps

$(VENV)/.deps: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet ".[dev]"
	touch $@

# Build the wheel and sdist once, then install the wheel itself (not an editable install), so tests
# run against exactly what users get and a file missing from the package cannot hide.
install: venv
	rm -rf dist
	$(BIN)/python -m build --quiet --outdir dist . >/dev/null
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall dist/*.whl

test: install
	cd tests && ../$(BIN)/python -m pytest -c ../pyproject.toml --rootdir .. $(PYTEST_ARGS) . ../README.md --pyargs lightning_lrbs

lint: venv
	$(BIN)/ruff check src tests examples
	$(BIN)/ruff format --check src tests examples
	$(BIN)/mypy src

demo: install
	$(BIN)/python examples/mnist.py --data-dir $(DATA_DIR)

clean:
	rm -rf $(VENV) dist build .pytest_cache .mypy_cache .ruff_cache
