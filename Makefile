# jvmail: the two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-faults lint typecheck pytest bench clean

$(BIN)/jvmail: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

demo: $(BIN)/jvmail
	$(BIN)/jvmail demo --dir .jvmail-demo

lint: $(BIN)/jvmail
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/jvmail
	$(BIN)/mypy jvmail

# The suite runs in one process per core (pytest-xdist), a test file per process at a time.
pytest: $(BIN)/jvmail
	$(BIN)/python -m pytest -n auto --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

test: lint typecheck pytest

# Every fault scenario at full size (`make test` runs the quick ones): tests/faults/README.md.
test-faults: $(BIN)/jvmail
	JVMAIL_FAULTS=all $(BIN)/python -m pytest tests/faults -s $(PYTEST_ARGS)

bench: $(BIN)/jvmail
	$(BIN)/python bench/import_subscribers.py
	$(BIN)/python bench/scheduler.py
	$(BIN)/python bench/send.py
	$(BIN)/python bench/smtp_client.py
	$(BIN)/python bench/tracking.py
	$(BIN)/python bench/reports.py

clean:
	rm -rf $(VENV) .jvmail-demo .mypy_cache .pytest_cache .ruff_cache
