# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit test-cluster crds bench clean lock-check

# uv.lock pins every package for every Python and platform: `make` installs exactly that
# (the project itself editable). `--locked` stops with "The lockfile needs to be updated"
# when pyproject.toml changed without `uv lock`; `--inexact` keeps pip and uv, which are not
# in the lock. After editing pyproject.toml's dependencies, run `$(BIN)/uv lock` and commit uv.lock.
UV_VERSION := 0.13.9
$(STAMP): pyproject.toml uv.lock setup.py serving/berth_serving/_numbers.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON_DOWNLOADS=never \
	  $(BIN)/uv sync --quiet --locked --inexact --extra dev --python $(BIN)/python
	# Bytecode now, as the serving image does at build: where PYTHONDONTWRITEBYTECODE is set
	# (this machine sets it) every process would compile its imports again (0.3 s a `berth`).
	$(BIN)/python -m compileall -q -j0 $(VENV)/lib serving/berth_serving operator/berth_operator >/dev/null
	touch $(STAMP)

# Fails when uv.lock no longer matches pyproject.toml (CI runs it; `uv lock` fixes it).
lock-check: $(STAMP)
	$(BIN)/uv lock --check

# Local mode serving the quickstart endpoint (a small model built on the spot).
demo: $(STAMP)
	$(BIN)/python examples/quickstart/build_model.py
	$(BIN)/berth up -f examples/quickstart

lint: $(STAMP)
	$(BIN)/ruff check operator serving tests bench examples .github/scripts
	$(BIN)/ruff format --check operator serving tests bench examples .github/scripts

typecheck: $(STAMP)
	$(BIN)/mypy

# Everything, the real API server tier (tests/cluster) included when its binaries are found;
# without them that tier is skipped with one line saying why (docs/testing.md).
unit: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The real API server tier alone: etcd, kube-apiserver and kube-controller-manager from
# KUBEBUILDER_ASSETS or setup-envtest's store (docs/testing.md). No binaries is an error here.
test-cluster: $(STAMP)
	BERTH_REQUIRE_CLUSTER=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/cluster

test: lint typecheck unit

# Regenerate the checked-in CRDs and docs/api.md from the API types.
crds: $(STAMP)
	$(BIN)/berth crds --output-dir crds --docs docs/api.md
	cp crds/berth.dev_*.yaml charts/berth/crds/

# Benchmarks print ratios against baselines measured in the same run (minutes each).
bench: $(STAMP)
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/local.py
	$(BIN)/python bench/reconcile.py
	$(BIN)/python bench/reconcile_cluster.py
	$(BIN)/python bench/transform.py
	$(BIN)/python bench/transform_s3.py
	$(BIN)/python bench/auth.py
	$(BIN)/python bench/async.py
	$(BIN)/python bench/serverless.py
	$(BIN)/python bench/multimodel.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
