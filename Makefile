# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create the environment from uv.lock if it is missing (only Python 3.11 and make are assumed).
SHELL := /bin/bash
PYTHON ?= python3.11
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo
DEMO_ACCOUNTS ?= 3000

.PHONY: env demo test test-fast browser clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==0.13.8

# The stamp depends on the lock, so a changed lock re-syncs the environment.
$(VENV)/.synced: uv.lock pyproject.toml | $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --python $(PYTHON)
	touch $@

env: $(VENV)/.synced

# Headless Chromium for the report/explanation page tests (Debian's package; needs root, as CI has).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); \
	  else echo "chromium missing: install Debian's 'chromium' package to run the browser tests"; fi; }

demo: env
	$(VENV)/bin/pql demo --out $(DEMO_DIR) --accounts $(DEMO_ACCOUNTS)

test: env browser
	$(VENV)/bin/pytest -q

test-fast: env
	$(VENV)/bin/pytest -q -m "not slow"

clean:
	rm -rf $(DEMO_DIR) mlruns mlflow.db .pytest_cache
