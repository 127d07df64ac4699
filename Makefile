# circuitd: `make test` and `make demo` do all the set-up they need on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
# GPU hosts: make install TORCH_SPEC=torch==2.13.0 TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint openapi demo conformance clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# ruff; the import arrows (import-linter contracts in pyproject.toml); the type checker
# (basedpyright: basic everywhere, strict for graphs/, api/ and the job spec).
lint: install
	$(BIN)/ruff check circuitd graphs workers api tests bench conformance
	$(BIN)/lint-imports
	$(BIN)/basedpyright

# The full suite: every tier (slow, service, browser, gpu; gpu tests skip without CUDA).
test: install lint
	bash scripts/ensure-redis.sh && bash scripts/ensure-chromium.sh
	$(BIN)/python -m pytest

# Everything unmarked: the quick tier to run while working (no services started, no slow sweeps).
test-fast: install
	$(BIN)/python -m pytest -m "not slow and not service and not browser and not gpu"

# Accept a deliberate API change: rewrite the OpenAPI snapshot that tests/api/test_openapi.py checks.
openapi: install
	$(BIN)/python -c "import api.app as a, pathlib; pathlib.Path('tests/api/openapi.json').write_text(a.openapi_text())"

# The service end to end over HTTP: circuitd up (SQLite store and broker, no Redis) on a free
# port and a temporary data dir, submit, watch, download, summary; stops it afterwards.
demo: install
	BIN=$(BIN) bash scripts/demo.sh

# The peer tools pin TransformerLens 2.x, which cannot share circuitd's venv: they get their own.
PEERS ?= .venv-peers
PEERS_STAMP := $(PEERS)/.installed

$(PEERS_STAMP):
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PEERS)/bin/pip install -q transformer-lens==2.18.0 transformers==4.57.3 auto-circuit==1.0.1 \
		circuit-tracer==0.5.0 "numpy<2" "pyarrow<21" attrs
	touch $(PEERS_STAMP)

# circuitd against auto-circuit (EAP, ACDC) and circuit-tracer (attribution graphs) on the same
# seeded random model and task: every comparison, then one line of time ratios circuitd / peer
# (`eap_vs_autocircuit=X acdc_vs_autocircuit=Y attribution_vs_circuittracer=Z`); fails when a
# comparison does. Options: make conformance CONFORMANCE_ARGS="--threads 2 --repeats 9".
CONFORMANCE_ARGS ?=
conformance: install $(PEERS_STAMP)
	$(BIN)/python conformance/run.py --peers $(PEERS) $(CONFORMANCE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo-circuit.json
