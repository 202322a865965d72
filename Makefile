# The two commands of the README: `make run` (default study) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Rules call the `mae` console script: put the environment first on PATH for every recipe.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: run smoke test test-fast venv lint bench report dvc-repro docs clean
venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: venv
	$(BIN)/snakemake --cores all

smoke: venv
	$(BIN)/snakemake --cores all --configfile config/smoke.yaml

# Everything but GPU tests: the fast suite, the real smoke study (+ resume after a kill) and, as root, parts of the smoke
# study on a real single-node SLURM (tests/slurm/start_cluster.sh installs and starts it; skipped otherwise).
# Two pytest workers (pytest-xdist): most tests use one torch thread, so one worker leaves a core idle. The SLURM
# tests run after them in one process: they share one cluster, which a module fixture starts and stops, and
# xdist's loadgroup did not always keep them on one worker (a worker's teardown stopped the other's cluster).
test: venv
	$(BIN)/python -m pytest -q -m "not cuda and not slurm" -n 2 --durations=15
	$(BIN)/python -m pytest -q -m slurm --durations=5

test-fast: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/

report: venv
	$(BIN)/snakemake --report results/report.html

# DVC: the study stage (Snakemake) if config/config.yaml or the rules changed, then tables/claims/figures
# (docs/dvc.md); PATH above puts .venv's snakemake and mae first for the stage commands.
dvc-repro: venv
	$(BIN)/dvc repro

# The docs site (mkdocs.yml) into site/; --strict: a broken link, a missing anchor or a stale reference fails.
docs: venv
	$(BIN)/mkdocs build --strict

bench: venv
	$(BIN)/mae bench pretrain --preset cpu-tiny

clean:
	rm -rf results/runs results/data results/summary .snakemake
