# Two commands do everything on a fresh machine with Python 3.11 and Java 17:
#   make demo   builds .venv and runs `sparkfeed demo`: scikit-learn digits from a DataFrame train a small CNN, inference on Spark
#   make test   lint, type-check, the documentation site and the whole test suite
#   make docs   the documentation site (docs/, mkdocs.yml) into build/site, warnings as errors
#   make bench  sparkfeed vs Petastorm vs pyarrow: ~14 min on 2 cores with the s3 group (first run +3 min for the datasets), see benchmarks/README.md
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test lint typecheck docs pytest java venv clean bench bench-quick

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[torch,tf,jax,dev]'
	touch $@

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[torch,tf,jax,dev,bench]'
	touch $@

venv: $(STAMP)

java:
	@scripts/ensure-java.sh

demo: java venv
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) -m sparkfeed demo

lint: venv
	$(VENV)/bin/ruff check src tests examples benchmarks docs
	$(VENV)/bin/ruff format --check src tests examples benchmarks docs

typecheck: venv
	$(VENV)/bin/mypy

pytest: java venv
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) -m pytest $(PYTEST_ARGS)

# Offline and strict: a broken link, a missing anchor or a page outside the nav fails the build.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site

test: lint typecheck docs pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Builds the Petastorm anchor venv (.anchors/petastorm) and the source datasets when missing.
bench: java venv $(BENCH_STAMP)
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) benchmarks/run.py $(BENCH_ARGS)

bench-quick: java venv $(BENCH_STAMP)
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) benchmarks/run.py --quick $(BENCH_ARGS)
