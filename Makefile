# Two entry points: `make run` (install, then the full local pipeline on the default data) and `make test`.
PYTHON ?= /root/.pyenv/versions/3.10.13/bin/python3.10
VENV := .venv
UV := $(PYTHON) -m uv
STAMP := $(VENV)/.installed
# The web page test drives Debian's chromium (no browser download); installed once, needs root.
CHROMIUM := /usr/bin/chromium

.PHONY: install run test lint

# Bytecode compiled at install: where PYTHONDONTWRITEBYTECODE is set (this project's CI), every process
# compiled TF, TFX and Beam from source again (the local runner imported in 47 s, 19 s compiled; 2-core CPU).
$(STAMP): requirements.lock setup.py
	$(PYTHON) -m pip install -q "uv==0.13.9"
	$(UV) venv -q --seed --allow-existing -p $(PYTHON) $(VENV)
	$(UV) pip sync -q --compile-bytecode -p $(VENV)/bin/python requirements.lock
	$(UV) pip install -q -p $(VENV)/bin/python --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

$(CHROMIUM):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium

run: $(STAMP)
	$(VENV)/bin/bloodcell run

test: $(STAMP) $(CHROMIUM)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -v --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check .
