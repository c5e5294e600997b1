# The two commands a newcomer needs: `make demo` (set up + run the main job) and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
UV := $(shell command -v uv 2>/dev/null || echo $(VENV)-tools/bin/uv)
STAMP := $(VENV)/.installed
PERSONS ?= 20000
SEED ?= 20261101

.PHONY: demo test install bench lint clean

$(VENV)-tools/bin/uv:
	$(PY) -m venv $(VENV)-tools
	$(VENV)-tools/bin/pip install --quiet uv

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra test --python $(PY)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/safetynet demo --persons $(PERSONS) --seed $(SEED) --store ./var/demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python bench/ingest.py
	$(VENV)/bin/python bench/build.py

clean:
	rm -rf var .pytest_cache .hypothesis
