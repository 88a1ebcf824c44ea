# Two commands on a fresh machine: `make serve` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: serve test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.local-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[local]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.local-installed

serve: $(VENV)/.local-installed  ## install and start the local engine on http://127.0.0.1:8080
	$(BIN)/replies-engine serve $(ARGS)

CHROMIUM ?= /usr/bin/chromium
CHECKOV_VENV ?= .venv-checkov
# pinned: a new release brings new checks, and docs/security.md lists the findings that remain
CHECKOV_VERSION = 3.3.30

$(CHECKOV_VENV)/bin/checkov:  # in its own environment: it pins its own boto3
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q 'checkov==$(CHECKOV_VERSION)'

$(CHROMIUM):  # the inbox page's tests drive Debian's Chromium (no browser download is possible here)
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

test: $(VENV)/.test-installed $(CHROMIUM) $(CHECKOV_VENV)/bin/checkov  ## install the test dependencies (Chromium, checkov), lint the SAM template, run the whole suite
	$(BIN)/cfn-lint template.yaml
	CHECKOV=$(CHECKOV_VENV)/bin/checkov $(BIN)/python -m pytest -q $(ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) build src/*.egg-info .pytest_cache replies-engine.db*
