# The two commands a newcomer needs: `make demo` (set up + run the main job) and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
UV := $(shell command -v uv 2>/dev/null || echo $(VENV)-tools/bin/uv)
STAMP := $(VENV)/.installed
PERSONS ?= 20000
SEED ?= 20261101

.PHONY: demo test install bench lint clean browser spark
# Browser tests drive Debian's Chromium (never a downloaded browser); CJK fonts so Chinese renders.
BROWSER_STAMP := $(VENV)/.browser
APT := $(shell [ "$$(id -u)" = 0 ] && echo apt-get || echo sudo apt-get)

$(VENV)-tools/bin/uv:
	$(PY) -m venv $(VENV)-tools
	$(VENV)-tools/bin/pip install --quiet uv

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra test --python $(PY)
	touch $(STAMP)

install: $(STAMP)

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

demo: $(STAMP)
	$(VENV)/bin/safetynet demo --persons $(PERSONS) --seed $(SEED) --store ./var/demo

test: $(STAMP) $(BROWSER_STAMP) $(SPARK_STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python bench/ingest.py
	$(VENV)/bin/python bench/build.py
	$(VENV)/bin/python bench/review.py

clean:
	rm -rf var .pytest_cache .hypothesis
