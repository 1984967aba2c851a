# make demo: install, then run the whole demo workflow; make test: install, then the test suite.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
INSTALLED := $(VENV)/.installed

.PHONY: install demo test lint report

$(PYTHON):
	python3 -m venv $(VENV)

# torch first: the CPU build this machine keeps on local disk, not the CUDA build from the index.
$(INSTALLED): $(PYTHON) pyproject.toml
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e '.[test,qlora,slurm]'
	$(PYTHON) -m pip install --no-build-isolation 'deepspeed>=0.16'
	touch $@

install: $(INSTALLED)

demo: install
	$(SNAKEMAKE) --profile profiles/local --cores all

test: install
	$(PYTHON) -m pytest

lint: install
	$(SNAKEMAKE) --lint

report: install
	$(SNAKEMAKE) --report report.html
