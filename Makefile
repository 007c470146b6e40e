# Two commands on a fresh machine:  `make up`  (set up + run the stack)  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROTOS := $(wildcard proto/search/v1/*.proto)

.PHONY: install models up test test-fast proto lint deploy-check sync-monitoring clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

models: install
	$(BIN)/searchctl models fetch

up: models
	$(BIN)/searchctl up

# The whole suite: unit, integration (real servers on loopback), end-to-end (grpcurl,
# buf, promtool, kubectl, Envoy protos when installed; skipped with a reason otherwise).
test: models
	@if [ -x scripts/setup_xds_env.sh ]; then scripts/setup_xds_env.sh; fi
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

# Without the slow kinds (each folder's marker: tests/conftest.py; registered in pyproject.toml).
FAST_MARKERS := not integration and not e2e and not resilience and not quality
test-fast: models
	$(BIN)/python -m pytest -ra -m "$(FAST_MARKERS)" $(PYTEST_ARGS)

# Regenerate the Python stubs and the documented descriptor set that server reflection serves
# (committed; tests/unit/test_contracts.py checks they are fresh).
proto: install
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTOS)
	$(BIN)/python -m grpc_tools.protoc -I proto --include_source_info --include_imports \
		--descriptor_set_out=gen/search/v1/contracts.binpb $(PROTOS)

# Render and validate k8s overlays, the Envoy config, compose and Dockerfiles.
deploy-check: install
	scripts/setup_xds_env.sh
	$(BIN)/python -m pytest -ra tests/deploy

# Copy observability/ (alert rules, dashboard) into the k8s monitoring component.
sync-monitoring: install
	$(BIN)/python k8s/components/monitoring/sync_observability.py

lint:
	buf lint
	buf breaking --against '.git#branch=main'

clean:
	rm -rf $(VENV) .venv-xds .pytest_cache .data
