# The two commands of the README. Each creates .venv (once) and installs the project into it.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo demo-quick data browser test test-hosts clean

FMNIST = /usr/share/datasets/fashion-mnist

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,plot,test]'
	touch $(STAMP)

# Fashion-MNIST from Debian's package where apt exists (else: spikeclip demo --data DIR, or a network for torchvision).
data:
	@if [ ! -d $(FMNIST) ] && command -v apt-get >/dev/null; then \
		S=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$S apt-get install -y -q dataset-fashion-mnist || \
		{ $$S apt-get update -q && $$S apt-get install -y -q dataset-fashion-mnist; }; fi

# Debian's Chromium for the zero-shot page's browser test (Playwright drives it; it cannot download its own).
# Without apt or a network the test skips and says why.
browser:
	@if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then \
		S=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$S apt-get install -y -q chromium || \
		{ $$S apt-get update -q && $$S apt-get install -y -q chromium; } || \
		echo 'make browser: could not install chromium; the browser test will be skipped'; fi

demo: $(STAMP) data
	$(VENV)/bin/spikeclip demo --out out/demo

demo-quick: $(STAMP) data
	$(VENV)/bin/spikeclip demo --quick --out out/demo-quick

# Two workers (pytest-xdist), one file each at a time: most of the suite's time is single-threaded (interpreter
# start-up, commands in subprocesses), so two files at once keep both cores busy.
test: $(STAMP) browser
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25 tests

# The hosts' own suites over everything this project registers, and the export sweep (CI runs it after `test`; ~20 min on 2 cores):
# timm's tests/test_models.py over all 22 models and open_clip's tests, training loop included, over every config.
# `test` runs them on the SpikeCLIP towers and SpikeCLIP-Tiny only, to stay within its 10 minutes.
test-hosts: $(STAMP)
	TIMM_SPIKE_SUITE_MODELS='*' SPIKECLIP_HOST_SUITE=full $(PY) -m pytest -q --durations=5 tests/hosts

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
