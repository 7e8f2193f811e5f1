# `make demo` and `make test` create .venv when it is missing (or when
# pyproject.toml changed) and then run; when it is up to date they start at once.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench table3 digits clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/advorch demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/step_cost.py   # every term, image CNN on digits and LSTM-Attention on MR
	$(VENV)/bin/python benchmarks/ray_overhead.py

digits: $(STAMP)
	$(VENV)/bin/python benchmarks/digits_ig.py --threads 1

table3: $(STAMP)
	$(VENV)/bin/python benchmarks/table3_mr.py --seeds 5

clean:
	rm -rf $(VENV) .pytest_cache
