# Two entry points: `make run` (install, then the full local pipeline on the default data) and `make test`.
PYTHON ?= /root/.pyenv/versions/3.10.13/bin/python3.10
VENV := .venv
UV := $(PYTHON) -m uv
STAMP := $(VENV)/.installed

.PHONY: install run test lint

$(STAMP): requirements.lock setup.py
	$(PYTHON) -m pip install -q "uv==0.13.9"
	$(UV) venv -q --seed --allow-existing -p $(PYTHON) $(VENV)
	$(UV) pip sync -q -p $(VENV)/bin/python requirements.lock
	$(UV) pip install -q -p $(VENV)/bin/python --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/bloodcell run

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -v --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check .
