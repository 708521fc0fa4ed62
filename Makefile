# Everything bootstraps .venv itself: a fresh machine needs only Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean readme-transcript

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "runbook-bot needs Python 3.11 or newer; set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/runbook-bot demo

# README.md's "What you'll see": the scripted demo's excerpt (tests/test_readme.py checks it is current)
readme-transcript: $(STAMP)
	$(BIN)/python -m bot.console --readme README.md

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not serial"
	$(BIN)/python -m pytest -q -m serial

bench: $(STAMP)
	$(BIN)/python bench/precheck.py
	$(BIN)/python bench/backup.py
	$(BIN)/python bench/monitor.py
	$(BIN)/python bench/storm.py
	$(BIN)/python bench/rehearse.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
