# `make demo` and `make test` create .venv when it is missing (or when
# pyproject.toml changed) and then run; when it is up to date they start at once.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench table3 clean

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
	$(VENV)/bin/python benchmarks/step_cost.py --regimes clean,at,attention_at,attention_at+sf,attention_at+cat,vat,at_vat,pgd
	$(VENV)/bin/python benchmarks/ray_overhead.py

table3: $(STAMP)
	$(VENV)/bin/python benchmarks/table3_mr.py --seeds 5

clean:
	rm -rf $(VENV) .pytest_cache
