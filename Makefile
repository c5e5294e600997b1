# The two commands a newcomer needs: `make demo` (set up + run the main job) and `make test`.
# `make demo` installs only what the hub runs on. `make test` adds the test extra (pytest,
# Playwright, moto, hypothesis …) and, if missing, apt-installs Debian's `chromium` and
# `fonts-noto-cjk` for the browser tests (with sudo when not root; no browser is downloaded), and
# builds .venv-spark for the Spark reader test when Java 17+ is present.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
UV := $(shell command -v uv 2>/dev/null || echo $(VENV)-tools/bin/uv)
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
PERSONS ?= 20000
SEED ?= 20261101

.PHONY: demo test test-fast test-distributed install install-test bench lint clean browser spark
# Browser tests drive Debian's Chromium (never a downloaded browser); CJK fonts so Chinese renders.
BROWSER_STAMP := $(VENV)/.browser
APT := $(shell [ "$$(id -u)" = 0 ] && echo apt-get || echo sudo apt-get)

$(VENV)-tools/bin/uv:
	$(PY) -m venv $(VENV)-tools
	$(VENV)-tools/bin/pip install --quiet uv

# The runtime dependencies from the lock. --inexact: a `make demo` after `make test` keeps the
# test extra (a plain `uv sync` removes whatever the runtime set does not list).
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --inexact --python $(PY)
	touch $(STAMP)

# The runtime dependencies, the test extra and the lint tools (exact: nothing else stays in the venv).
$(TEST_STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra test --extra lint --python $(PY)
	touch $(STAMP) $(TEST_STAMP)

install: $(STAMP)

install-test: $(TEST_STAMP)

$(BROWSER_STAMP):
	@if [ ! -x /usr/bin/chromium ] || ! fc-list 2>/dev/null | grep -qi "Noto Sans CJK"; then \
	  DEBIAN_FRONTEND=noninteractive $(APT) install -y -q chromium fonts-noto-cjk; fi
	@mkdir -p $(VENV) && touch $(BROWSER_STAMP)

browser: $(BROWSER_STAMP)

# The Spark reader of tests/test_readers.py runs in its own venv: pyspark never enters the hub's
# (great_expectations would import it in every process). Skipped without Java 17+ (the test says so).
SPARK_STAMP := .venv-spark/.installed
$(SPARK_STAMP): tests/spark/requirements.txt | $(UV)
	@if command -v java >/dev/null 2>&1 || [ -n "$$JAVA_HOME" ]; then \
	  $(UV) venv --quiet --allow-existing --python $(PY) .venv-spark && \
	  $(UV) pip install --quiet --python .venv-spark/bin/python --require-hashes -r tests/spark/requirements.txt && \
	  touch $(SPARK_STAMP); \
	else echo "no Java: the Spark reader test will be skipped"; fi

spark: $(SPARK_STAMP)

# the demo's store is every command's default store, ./var/store (SAFETYNET_STORE)
demo: $(STAMP)
	$(VENV)/bin/safetynet demo --persons $(PERSONS) --seed $(SEED)

test: $(TEST_STAMP) $(BROWSER_STAMP) $(SPARK_STAMP)
	$(VENV)/bin/python -m pytest -q

# The inner loop: the pure unit tests (no broker, S3 server, PostgreSQL, browser or Airflow; markers
# are applied by fixture use in tests/conftest.py), in under a minute: pytest-xdist, one worker a CPU.
test-fast: $(TEST_STAMP)
	$(VENV)/bin/python -m pytest -q -n auto -m "not (broker or s3 or postgres or browser or airflow or slow or faults)" -p no:cacheprovider

# The monitoring DAG on Airflow's CeleryExecutor: two `airflow celery worker`s on Redis (127.0.0.1:6379,
# db 13, a queue of its own: SAFETYNET_TEST_REDIS), PostgreSQL metadata (a fresh database, dropped after:
# SAFETYNET_TEST_POSTGRES), a two-county city; the published snapshot equals `safetynet run`'s. Part of
# `make test` (so of CI) too; this target runs it alone (2½–3½ minutes on 2 CPUs).
test-distributed: $(TEST_STAMP)
	$(VENV)/bin/python -m pytest -q -m distributed -p no:cacheprovider

# ruff (style, import order, bugbear, Airflow), mypy on the runtime packages, and the layer
# contract (.importlinter: each layer imports only from the layers before it).
lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(TEST_STAMP)
	$(VENV)/bin/python bench/ingest.py
	$(VENV)/bin/python bench/build.py
	$(VENV)/bin/python bench/review.py

clean:
	rm -rf var .pytest_cache .hypothesis
