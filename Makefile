# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit crds bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

# Local mode serving the quickstart endpoint (a small model built on the spot).
demo: $(STAMP)
	$(BIN)/python examples/quickstart/build_model.py
	$(BIN)/berth up -f examples/quickstart

lint: $(STAMP)
	$(BIN)/ruff check operator serving tests bench examples
	$(BIN)/ruff format --check operator serving tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

test: lint typecheck unit

# Regenerate the checked-in CRDs from the API types.
crds: $(STAMP)
	$(BIN)/berth crds --output-dir crds
	cp crds/berth.dev_*.yaml charts/berth/crds/

# Benchmarks print ratios against baselines measured in the same run (minutes each).
bench: $(STAMP)
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/local.py
	$(BIN)/python bench/reconcile.py
	$(BIN)/python bench/transform.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
