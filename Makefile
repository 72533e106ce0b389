# `make demo`: one whole CI job through the four entrypoints on the local default.
# `make test`: the test suite; `make test-fast`: its lane without root, in seconds.
# `make lint`: ruff, mypy, and the documentation site (docs/, mkdocs.yml) built --strict.
# Each installs what it needs first (scripts/setup).
PY := .venv/bin/python

.PHONY: setup demo test test-fast lint bench

setup:
	@./scripts/setup

demo: setup
	PATH="$(CURDIR)/testing/bin:$(CURDIR)/.venv/bin:$$PATH" $(PY) -m testing.runner --config $(CURDIR)/config/demo.toml

# Four workers on two cores: the integration tests mostly wait on their machines
# (measured: the whole suite in 10 min with -n 4, 15 min with -n 2).
test: setup
	$(PY) -m pytest -n 4 --durations=15

# The lane that needs no root, no namespaces and no Docker: seconds, with branch coverage.
test-fast: setup
	HYPOTHESIS_PROFILE=quick $(PY) -m pytest -n 2 -m "not slow" --cov --cov-report=term

lint: setup
	$(PY) -m ruff check driver testing tests bench
	$(PY) -m ruff format --check driver testing tests bench
	$(PY) -m mypy driver testing tests bench
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

bench: setup
	PATH="$(CURDIR)/testing/bin:$(CURDIR)/.venv/bin:$$PATH" $(PY) -m bench.stages
	PATH="$(CURDIR)/testing/bin:$(CURDIR)/.venv/bin:$$PATH" $(PY) -m bench.image
