# Two commands on a fresh machine: `make serve` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: serve test test-floors lint bench clean

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

$(CHECKOV_VENV)/.v$(CHECKOV_VERSION):  # in its own environment: it pins its own boto3
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q 'checkov==$(CHECKOV_VERSION)'
	touch $@

$(CHROMIUM):  # the inbox page's tests drive Debian's Chromium (no browser download is possible here)
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

test: $(VENV)/.test-installed $(CHROMIUM) $(CHECKOV_VENV)/.v$(CHECKOV_VERSION)  ## install the test dependencies (Chromium, checkov), lint the SAM template, the import contracts and the package's types, run the whole suite, then the floors' smoke subset
	$(BIN)/cfn-lint template.yaml
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	CHECKOV=$(CHECKOV_VENV)/bin/checkov $(BIN)/python -m pytest -q -n 2 --dist loadfile $(ARGS)
	$(MAKE) --no-print-directory test-floors

bench: $(VENV)/.test-installed  ## run every benchmark the docs show; each output in bench/results/ (about an hour)
	$(BIN)/python bench/all.py $(ARGS)

# Declared lower bounds are tested ones: every runtime dependency at its floor (.ci/floors.txt), a
# signed webhook end to end on both backends, replies through twilio's client to a fake Twilio API,
# the OpenAI-compatible client, a live `serve`.
FLOOR_VENV ?= .venv-floors
FLOOR_TESTS = tests/test_webhook_accepts.py tests/test_channel_rules.py tests/test_responders_senders.py \
	tests/test_engine_e2e.py::test_a_live_serve_records_stop_and_delivery_status_callbacks \
	tests/test_engine_e2e.py::test_ctrl_c_finishes_the_batch_in_hand_and_keeps_what_is_queued

$(FLOOR_VENV)/.installed: pyproject.toml .ci/floors.txt
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install -q -c .ci/floors.txt -e '.[aws]' \
		'moto[server,dynamodb,sqs,secretsmanager,sns,s3]' aws-sam-translator pyyaml pytest pytest-timeout
	touch $@

test-floors: $(FLOOR_VENV)/.installed
	$(FLOOR_VENV)/bin/python -m pytest -q -p no:cacheprovider $(FLOOR_TESTS) \
		-k "not (channel_rules and aws) and not (responders_senders and openai and not sends_the_conversation)"

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(FLOOR_VENV) build src/*.egg-info .pytest_cache replies-engine.db*
