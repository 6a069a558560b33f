# lightning-lrbs: every target sets up what it needs on a fresh machine.
#   make test   - the whole test suite against the installed wheel (what CI runs)
#   make test-oldest - the fast tests against the oldest lightning / pytorch-lightning / jsonargparse we declare
#   make demo   - train the MNIST CNN with BatchScalingCallback
#   make lint   - ruff + mypy --strict
#   make docs   - the documentation site from docs/ into docs/_build/html (warnings are errors, links checked)
#   make bench  - benchmarks (not part of make test)
#   make frontier - the batch-size study of docs/frontier.md (not part of make test)
#   make ramp   - the batch-ramp study of docs/ramp.md (not part of make test)
#   make auto-lr - issue 21's study of docs/auto_lr.md (not part of make test)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Real MNIST: the read-only copy beside the checkout when there is one, else ./data (downloaded on first use).
DATA_DIR ?= $(if $(wildcard ../shared/data/MNIST/raw/train-images-idx3-ubyte.gz),../shared/data,data)
PYTEST_ARGS ?=
# The oldest releases pyproject.toml declares (tests/test_package.py checks the two agree). The oldest environment
# installs only these over the dev venv, whose packages (torch included) it reuses through a .pth file.
VENV_OLDEST ?= .venv-oldest
LIGHTNING_OLDEST ?= 2.1.0
JSONARGPARSE_OLDEST ?= 4.27.7
# Lightning < 2.5 replays the batch after which a mid-epoch checkpoint was saved (one extra optimizer step on resume);
# these tests compare whole LR sequences with an uninterrupted run, so they hold from 2.5 on only.
OLDEST_DESELECT := \
	tests/test_callback.py::TestResume::test_interrupted_and_resumed_equals_uninterrupted \
	tests/test_callback.py::TestResume::test_resume_with_more_accumulation_rescales_by_the_ratio \
	tests/test_warmup.py::TestResume::test_resumed_mid_warmup_equals_uninterrupted \
	tests/test_interrupts.py::test_checkpoint_saved_on_exception_holds_scheduled_lr_and_resume_continues_exactly \
	tests/test_interrupts.py::test_handler_saving_after_fit_raised_writes_scheduled_lr \
	tests/test_interrupts.py::test_sigterm_is_deferred_to_the_end_of_the_step_and_resume_continues_exactly \
	tests/test_interrupts.py::test_stop_or_validation_error_after_a_step_resumes_exactly \
	tests/test_batch_ramp.py::TestFit::test_resume_mid_epoch_while_a_change_waits_to_align_equals_the_uninterrupted_run \
	tests/test_batch_ramp.py::TestFit::test_resume_from_a_checkpoint_saved_inside_an_accumulation_window \
	tests/test_capped.py::TestResume::test_interrupted_and_resumed_equals_uninterrupted \
	tests/test_capped.py::TestResume::test_resume_at_twice_the_batch_rescales_by_the_ratio_of_the_factors

.PHONY: venv install test test-oldest lint docs demo sweep sde-sweep bench frontier ramp auto-lr gpu-check clean

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

# From tests/ with --import-mode=importlib, src/ is never on sys.path; LRBS_EXPECT_INSTALLED=1 makes
# tests/test_package.py fail if lightning_lrbs was imported from anywhere but the installed wheel.
test: install
	cd tests && LRBS_EXPECT_INSTALLED=1 ../$(BIN)/python -m pytest -c ../pyproject.toml --rootdir .. $(PYTEST_ARGS) \
		. --pyargs lightning_lrbs

$(VENV_OLDEST)/.deps: $(VENV)/.deps Makefile
	test -x $(VENV_OLDEST)/bin/python || $(PYTHON) -m venv $(VENV_OLDEST)
	$(BIN)/python -c 'import sysconfig; print(*sorted(set(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))), sep="\n")' \
		> "$$($(VENV_OLDEST)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_lrbs_reuse_dev_venv.pth"
	$(VENV_OLDEST)/bin/python -m pip install --quiet --disable-pip-version-check \
		"lightning==$(LIGHTNING_OLDEST)" "pytorch-lightning==$(LIGHTNING_OLDEST)" \
		"jsonargparse[signatures]==$(JSONARGPARSE_OLDEST)" "setuptools<81" requests
	touch $@

# The wheel comes from the dev venv (through the .pth); the oldest releases installed in $(VENV_OLDEST) shadow the
# newer ones there. Lightning 2.1 needs pkg_resources (setuptools < 81) and its demos import requests.
test-oldest: install $(VENV_OLDEST)/.deps
	cd tests && LRBS_EXPECT_INSTALLED=1 LRBS_EXPECT_OLDEST=1 ../$(VENV_OLDEST)/bin/python -m pytest -c ../pyproject.toml \
		--rootdir .. -m "not slow" $(addprefix --deselect ,$(OLDEST_DESELECT)) $(PYTEST_ARGS) . --pyargs lightning_lrbs

lint: venv
	$(BIN)/ruff check src tests examples docs/conf.py
	$(BIN)/ruff format --check src tests examples docs/conf.py
	$(BIN)/mypy src

# The documentation site (Sphinx + MyST, docs/conf.py), built afresh from the installed wheel's docstrings. -W: every
# warning is an error (--keep-going lists them all first), among them a link to a page, file or anchor that does not
# exist and a page in no navigation list; -n: every cross-reference to a lightning_lrbs name must resolve. Then no
# machine path may appear in the built pages. Offline: no intersphinx, no external link checks.
docs: install
	rm -rf docs/_build docs/reference/generated
	$(BIN)/sphinx-build -W --keep-going -n -q -b html -d docs/_build/doctrees docs docs/_build/html
	@if grep -rlP '(?<![\w.])/(work|tmp)/' docs/_build/html; then echo "machine paths in the pages above"; exit 1; fi
	@echo "docs/_build/html/index.html"

demo: install
	$(BIN)/python examples/mnist.py --data-dir $(DATA_DIR)

# The scaling experiment of docs/scaling/ (about 11 min on 2 CPU cores).
sweep: install
	$(BIN)/python examples/scaling_sweep.py --data-dir $(DATA_DIR) --output-dir docs/scaling

# The rule="sde" experiment of docs/sde/ (Adam: sqrt / sde / linear, EMA gap).
sde-sweep: install
	$(BIN)/python examples/sde_sweep.py --data-dir $(DATA_DIR) --output-dir docs/sde

# Benchmarks of docs/benchmarks.md (about 30 min on 2 CPU cores: the published 60-min run included the large-batch
# part, 27.6 min, now in make frontier); not part of make test.
bench: install
	$(BIN)/python benchmarks/run_all.py --data-dir $(DATA_DIR)

# The batch-size study of docs/frontier.md: the MLP and the CNN in parallel, one thread each (the CNN took
# 36 min on 2 shared CPU cores), then the figure and the page. FRONTIER_ARGS="--resume" keeps the runs already in the
# CSVs (e.g. to add rule='adascale' once it is installed).
FRONTIER_ARGS ?=
frontier: install
	mkdir -p docs/frontier
	$(BIN)/python benchmarks/frontier.py --model mlp --data-dir $(DATA_DIR) $(FRONTIER_ARGS) \
		> docs/frontier/mlp.log 2>&1 & mlp=$$!; \
	$(BIN)/python benchmarks/frontier.py --model cnn --data-dir $(DATA_DIR) --scales 1 4 16 64 --eval-subset 1000 \
		--base-lr-start 0.05 --max-steps 4000 $(FRONTIER_ARGS) > docs/frontier/cnn.log 2>&1 && wait $$mlp
	$(BIN)/python benchmarks/frontier.py --report

# What only a GPU can check (FSDP, DeepSpeed, CUDA AMP, NCCL; benchmarks/gpu_check.py, about 5 min on one GPU).
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py --out docs/gpu_check.md

# The batch-ramp study of docs/ramp.md (issue 20): one process at a time on one thread (about 75 min on 2 shared CPU
# cores), each command as docs/ramp.md lists it with its log, then the figure and the page. Not part of make test.
RAMP := $(BIN)/python benchmarks/ramp.py --data-dir $(DATA_DIR)
ramp: install
	mkdir -p docs/ramp
	for s in mlp mlp_momentum cnn cnn_adam; do $(RAMP) --setting $$s > docs/ramp/$$s.log 2>&1 || exit 1; done
	{ $(RAMP) --setting mlp --resume --groups probe noise --noise-rules linear sqrt --noise-signals simple \
		--noise-k 2 4 8 16 32 && \
	  $(RAMP) --setting mlp --resume --groups noise --noise-rules linear sqrt --noise-signals hessian \
		--noise-k 0.5 1 2 4 8 && \
	  $(RAMP) --setting mlp --resume --groups noise --noise-rules linear sqrt --noise-signals progress \
		--noise-k 0.05 0.1 0.2 0.4; } > docs/ramp/mlp_noise.log 2>&1
	for s in mlp mlp_momentum cnn; do \
	  { $(RAMP) --setting $$s --resume --groups probe noise --noise-rules linear --noise-signals progress \
		--noise-k 0.4 --noise-targets 128 1024 && \
	    $(RAMP) --setting $$s --resume --groups noise --noise-rules sqrt --noise-signals hessian --noise-k 0.5 \
		--noise-targets 128 1024 && \
	    $(RAMP) --setting $$s --resume --groups noise --noise-rules sqrt --noise-signals simple --noise-k 8 \
		--noise-targets 128 1024; } > docs/ramp/$${s}_noise_check.log 2>&1 || exit 1; done
	{ $(RAMP) --setting cnn_adam --resume --groups probe noise --noise-rules sde sqrt --noise-signals hessian \
		--noise-k 0.5 --noise-targets 128 1024 && \
	  $(RAMP) --setting cnn_adam --resume --groups noise --noise-rules sde sqrt --noise-signals simple --noise-k 8 \
		--noise-targets 128 1024; } > docs/ramp/cnn_adam_noise_check.log 2>&1
	{ $(RAMP) --setting mlp --seed 1 && \
	  $(RAMP) --setting mlp --seed 1 --resume --groups noise --noise-rules linear --noise-signals progress \
		--noise-k 0.4 && \
	  $(RAMP) --setting mlp --seed 1 --resume --groups noise --noise-rules sqrt --noise-signals hessian \
		--noise-k 0.5 && \
	  $(RAMP) --setting mlp --seed 1 --resume --groups noise --noise-rules sqrt --noise-signals simple \
		--noise-k 8; } > docs/ramp/mlp_seed1.log 2>&1
	{ $(RAMP) --setting cnn --seed 1 --groups core && \
	  $(RAMP) --setting cnn --seed 1 --resume --groups noise --noise-rules sqrt --noise-signals simple \
		--noise-k 8; } > docs/ramp/cnn_seed1.log 2>&1
	$(RAMP) --setting cnn_adam --seed 1 --base-lr 0.004 --groups core > docs/ramp/cnn_adam_seed1.log 2>&1
	$(RAMP) --setting mlp --resume --groups noise --noise-rules linear sqrt --noise-signals simple_lb \
		--noise-k 1 2 4 8 16 > docs/ramp/mlp_noise_lb.log 2>&1
	for s in mlp mlp_momentum cnn cnn_adam; do \
	  if [ $$s = cnn_adam ]; then \
	    $(RAMP) --setting $$s --resume --groups noise --noise-signals simple_lb --noise-rules sde sqrt --noise-k 4 \
		--noise-targets 128 1024 > docs/ramp/$${s}_noise_lb_check.log 2>&1 || exit 1; \
	  else \
	    { $(RAMP) --setting $$s --resume --groups noise --noise-signals simple_lb --noise-rules linear \
		--noise-k 16 --noise-targets 128 1024 && \
	      $(RAMP) --setting $$s --resume --groups noise --noise-signals simple_lb --noise-rules sqrt --noise-k 4 \
		--noise-targets 128 1024; } > docs/ramp/$${s}_noise_lb_check.log 2>&1 || exit 1; \
	  fi; done
	$(BIN)/python benchmarks/ramp.py --report
# Issue 21's study of docs/auto_lr.md, one process at a time on one thread (about 3 h on a shared core): the new
# frontiers (development: mlp2, mlp2 + momentum, mlp + Adam; held out: cnn + Adam), the development grid, the
# edge-of-stability traces, the frozen rule and Lightning's LR finder on the held-out settings, then the page.
AUTO_LR := $(BIN)/python benchmarks/auto_lr.py --data-dir $(DATA_DIR)
FRONTIER_NEW := $(BIN)/python benchmarks/frontier.py --data-dir $(DATA_DIR) --out-dir docs/auto_lr
auto-lr: install
	mkdir -p docs/auto_lr
	$(FRONTIER_NEW) --model mlp --optimizer adam --name mlp_adam --base-lr-start 0.001 --scales 1 4 16 64 256 \
		> docs/auto_lr/frontier_mlp_adam.log 2>&1
	$(FRONTIER_NEW) --model mlp2 --name mlp2 --base-lr-start 0.1 --scales 1 4 16 64 256 \
		> docs/auto_lr/frontier_mlp2.log 2>&1
	$(FRONTIER_NEW) --model mlp2 --momentum 0.9 --name mlp2_momentum --base-lr-start 0.02 --scales 1 4 16 64 256 \
		> docs/auto_lr/frontier_mlp2_momentum.log 2>&1
	$(AUTO_LR) --dev > docs/auto_lr/dev.log 2>&1
	$(AUTO_LR) --traces > docs/auto_lr/traces.log 2>&1
	$(FRONTIER_NEW) --model cnn --optimizer adam --name cnn_adam --base-lr-start 0.001 --scales 1 4 16 64 \
		--eval-subset 1000 --max-steps 4000 > docs/auto_lr/frontier_cnn_adam.log 2>&1
	$(AUTO_LR) --held-out mlp_seed1 mlp_momentum cnn cnn_adam > docs/auto_lr/held_out.log 2>&1
	$(AUTO_LR) --report

clean:
	rm -rf $(VENV) $(VENV_OLDEST) dist build .pytest_cache .mypy_cache .ruff_cache docs/_build docs/reference/generated
