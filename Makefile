# Two commands do everything on a fresh machine with Python 3.11 and Java 17:
#   make demo   builds .venv and runs `sparkfeed demo`: scikit-learn digits from a DataFrame train a small CNN, inference on Spark
#   make test   lint, type-check, the documentation site and the whole test suite
#   make docs   the documentation site (docs/, mkdocs.yml) into build/site, warnings as errors
#   make test-oldest  the tests again on the oldest versions pyproject.toml allows (constraints-oldest.txt); CI runs both
#   make bench  sparkfeed vs Petastorm vs pyarrow: ~14 min on 2 cores with the s3 group (first run +3 min for the datasets), see benchmarks/README.md
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
OLDEST_VENV := .venv-oldest
OLDEST_STAMP := $(OLDEST_VENV)/.installed

.PHONY: demo test test-oldest lint typecheck docs pytest java venv clean bench bench-quick

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[torch,tf,jax,dev]'
	touch $@

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[torch,tf,jax,dev,bench]'
	touch $@

$(OLDEST_STAMP): pyproject.toml constraints-oldest.txt
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install -q -c constraints-oldest.txt -e '.[torch,tf,jax,test]'
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

# The oldest pyspark, pyarrow, numpy, pandas, TensorFlow and JAX that pyproject.toml allows, with the
# tests that need neither the docs' tools nor Spark Connect (TensorFlow 2.16 pins protobuf below 5,
# the Connect client above): what the declared ranges promise, tested. torch stays at 2.13, the
# CPU build this machine has. The newest versions are constraints.txt's, in `make test`.
test-oldest: java $(OLDEST_STAMP)
	PYSPARK_PYTHON=$(abspath $(OLDEST_VENV))/bin/python $(OLDEST_VENV)/bin/python -m pytest -k "not spark_connect" \
		--ignore=tests/test_site.py --ignore=tests/test_docs.py --ignore=tests/test_examples.py --ignore=tests/test_demo.py \
		$(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(OLDEST_VENV) .mypy_cache .ruff_cache .pytest_cache

# Builds the Petastorm anchor venv (.anchors/petastorm) and the source datasets when missing.
bench: java venv $(BENCH_STAMP)
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) benchmarks/run.py $(BENCH_ARGS)

bench-quick: java venv $(BENCH_STAMP)
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) benchmarks/run.py --quick $(BENCH_ARGS)
