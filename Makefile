# Two commands for a fresh machine: `make demo` (the main job) and `make test` (the test suite).
PY ?= python3

.PHONY: install demo test

install:
	$(PY) -m pip install -q -e ".[test]"

demo: install
	$(PY) -m opensapiens demo --out demo_out

test: install
	$(PY) -m ruff check opensapiens tests bench tools
	$(PY) -m pytest -x tests
