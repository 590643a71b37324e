# Set-up and the two jobs of the README. `make run` and `make test` create .venv if it is missing
# and install the exact versions pinned in requirements.lock (torch comes from local disk here).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint lock
# The main job: a 300-episode search with the two-level controller on the default task (about
# 20 s on 2 idle cores, after the install); run again, it replays the finished run from its log and
# prints the summary again.
run: $(STAMP)
	$(BIN)/jpq search --agent two-level --task digits --episodes 300 --out runs/default --resume

test: $(STAMP) lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy jpq_env agents/jpq_agents
	$(BIN)/lint-imports --no-cache

$(STAMP): requirements.lock setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Re-pin requirements.lock from what the venv holds (after changing setup.cfg).
lock: $(STAMP)
	$(BIN)/python -m pip freeze --all --exclude-editable | grep -v '^pip==' > requirements.lock
