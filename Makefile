# Two commands for a fresh machine:  `make demo` (fit + sample + diagnose + score on Two Birds)
# and `make test` (mypy on both packages, then the test suite). Each creates the virtual
# environment when it is missing. `make docs` adds the docs extra to it and builds the HTML
# documentation (API reference and tutorial) into docs/_build/html; any warning fails it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN ?= runs/demo
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed

.PHONY: demo test docs lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p $(RUN)
	$(BIN)/ppl-cvae fit --problem two_birds --functions data_1 --out $(RUN)/fit --overwrite
	$(BIN)/ppl-cvae simulate --problem two_birds --functions data_1 --num 4 --seed 123 --out $(RUN)/obs.npz --overwrite
	$(BIN)/ppl-cvae sample $(RUN)/fit --observation $(RUN)/obs.npz --num-samples 1000 --refine --out $(RUN)/posterior.nc --overwrite
	$(BIN)/ppl-cvae diagnose $(RUN)/posterior.nc --out $(RUN)/report --overwrite
	$(BIN)/ppl-cvae score $(RUN)/posterior.nc --out $(RUN)/score.json --overwrite

# one pytest-xdist worker per usable CPU (at most 8: about 0.7 GB each), one file per worker at a time
TEST_WORKERS ?= logical
test: $(STAMP)
	$(BIN)/mypy ppl_cvae inference
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --maxprocesses 8 --dist loadfile

$(DOCS_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	@echo "documentation: docs/_build/html/index.html"

lint: $(STAMP)
	$(BIN)/ruff check ppl_cvae inference tests benchmarks examples

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/two_birds.py

clean:
	rm -rf $(VENV) runs docs/_build
