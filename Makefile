# Two commands do everything on a fresh machine:
#   make demo   creates the virtual environment if needed, installs, runs `sightline demo`
#   make test   creates the virtual environment if needed, installs, runs the test suite
# The environment lives outside the clone, keyed by a hash of the dependency files, so a fresh
# clone reuses it and a change of dependencies builds a new one.
PYTHON ?= python3.11
DEPS_HASH := $(shell cat pyproject.toml | sha256sum | cut -c1-12)
VENV ?= $(HOME)/.cache/sightline/venv-$(DEPS_HASH)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean-venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)
	@# the editable install points at this clone; re-link it when the venv was made by another clone
	@$(BIN)/python -m pip install --quiet --no-deps -e . >/dev/null

demo: install
	@# demo-run/ is the demo's own output (git-ignored): a new demo replaces the previous one
	@if [ -d demo-run ]; then echo "replacing the previous demo-run/"; rm -rf demo-run; fi
	$(BIN)/sightline demo --out demo-run

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

clean-venv:
	rm -rf $(VENV)
