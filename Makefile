# Two commands do all the set-up on a fresh machine:
#   make run    creates .venv, installs hamdam, builds data/ from corpus/ and runs the DVC
#               pipeline prepare -> train -> evaluate (CPU, offline)
#   make test   creates .venv if needed and runs the whole test suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hamdam-installed

.PHONY: run test lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install-torch.sh
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	PYTHON=$(PY) bash scripts/install-torch.sh
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/hamdam data build
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro

test: $(STAMP)
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests pipelines

clean:
	rm -rf $(VENV)
