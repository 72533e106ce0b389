# `make demo`: one whole CI job through the four entrypoints on the local default.
# `make test`: the test suite. Both install what they need first (scripts/setup).
# `make lint`: ruff, mypy, and the documentation site (docs/, mkdocs.yml) built --strict.
PY := .venv/bin/python

.PHONY: setup demo test lint bench

setup:
	@./scripts/setup

demo: setup
	PATH="$(CURDIR)/tests/doubles/bin:$(CURDIR)/.venv/bin:$$PATH" $(PY) -m tests.runner --config $(CURDIR)/config/demo.toml

test: setup
	$(PY) -m pytest -n 2 --dist loadgroup

lint: setup
	$(PY) -m ruff check driver tests bench
	$(PY) -m ruff format --check driver tests bench
	$(PY) -m mypy driver tests bench
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

bench: setup
	PATH="$(CURDIR)/tests/doubles/bin:$(CURDIR)/.venv/bin:$$PATH" $(PY) bench/stages.py
	PATH="$(CURDIR)/tests/doubles/bin:$(CURDIR)/.venv/bin:$$PATH" $(PY) bench/image.py
