# make demo: install, then run the whole demo workflow; make test: install, then the test suite.
# make install installs the exact versions of requirements.lock; make lock recompiles it.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
INSTALLED := $(VENV)/.installed
LOCK := requirements.lock
# What `make install` installs besides the package (flash-attn is left to GPU machines).
EXTRAS := test,qlora,slurm,deepspeed
# The torch release the lock is compiled for (this machine's CPU build lies on local disk).
TORCH ?= 2.13.0
PIP_TOOLS := pip-tools==7.7.0

.PHONY: install demo test lint report lock

$(PYTHON):
	python3 -m venv $(VENV)

# torch and the build tools first: DeepSpeed's setup imports torch, so it builds without isolation.
$(INSTALLED): $(PYTHON) pyproject.toml $(LOCK)
	$(PYTHON) -m pip install -c $(LOCK) torch setuptools
	$(PYTHON) -m pip install -c $(LOCK) -e '.[test,qlora,slurm]'
	$(PYTHON) -m pip install -c $(LOCK) --no-build-isolation deepspeed
	touch $@

install: $(INSTALLED)

# Recompile the lock from pyproject.toml (newest versions its bounds allow, torch at $(TORCH)),
# pin the conda envs from it, then reinstall.
lock: $(PYTHON)
	$(PYTHON) -m pip install -q $(PIP_TOOLS) 'torch==$(TORCH)' setuptools
	printf 'torch==$(TORCH)\n' > $(VENV)/torch.in
	$(VENV)/bin/pip-compile --quiet --no-build-isolation --allow-unsafe --strip-extras --no-emit-index-url \
	  --no-emit-find-links --extra $(subst $(comma), --extra ,$(EXTRAS)) --constraint $(VENV)/torch.in \
	  --output-file $(LOCK) pyproject.toml
	sed -i -E 's/^(torch==[^+]+)\+[a-z0-9]+$$/\1/; s#(-c |--constraint=)$(VENV)/torch.in#\1torch.in#' $(LOCK)
	$(PYTHON) -m phi3v.lockfile --write-envs
	$(MAKE) install

demo: install
	$(SNAKEMAKE) --profile profiles/local --cores all

test: install
	$(PYTHON) -m pytest

lint: install
	$(SNAKEMAKE) --lint

report: install
	$(SNAKEMAKE) --report report.html

comma := ,
