# metab_opt — quick start: `make study`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU wheel of this release lies on these machines' disk; an unpinned torch would pull a
# multi-GB CUDA build. On a GPU machine, `make venv TORCH_SPEC='torch==2.13.0'` takes the CUDA
# wheel from the index as usual.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: venv test test-all study bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,compare]"
	@touch $(STAMP)

test: venv
	$(PY) -m pytest -q

test-all: venv
	$(PY) -m pytest -q -m "slow or not slow"

study: venv
	$(PY) scripts/run_study.py --workers auto

bench: venv
	$(VENV)/bin/metab-opt bench --config configs/rank50.yaml

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
