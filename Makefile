# Two commands do everything on a fresh machine:
#   make demo   creates the virtual environment if needed, installs, runs `sightline demo` (SEED=0 by default)
#               (then `make demo-serve`: the model in production, drift, review queue, the loop's commands)
#   make test   creates the virtual environment if needed, installs, runs the test suite
# The environment lives outside the clone, keyed by a hash of the dependency files, so a fresh
# clone reuses it and a change of dependencies builds a new one.
PYTHON ?= python3.11
DEPS_HASH := $(shell cat pyproject.toml | sha256sum | cut -c1-12)
VENV ?= $(HOME)/.cache/sightline/venv-$(DEPS_HASH)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SEED ?= 0

# PostgreSQL for the tests that use a real server (they skip, with the reason, where none answers).
TEST_DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

.PHONY: demo demo-serve test install browser clean-venv

# The venv's name holds the hash of pyproject.toml, so a venv whose stamp exists has these dependencies: the stamp
# does not depend on the file's date (a fresh clone's is new, and reinstalled everything, ~6 s, for nothing).
$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)
	@# the editable install points at one clone: re-linked (~3 s) only when the venv's `sightline` is another
	@# clone's (-I: the current folder is not on the path, so the check sees what the venv imports)
	@test "$$($(BIN)/python -I -c 'import pathlib, sightline; print(pathlib.Path(sightline.__file__).parents[1])' \
	  2>/dev/null)" = "$$(pwd -P)" || $(BIN)/python -m pip install --quiet --no-deps -e . >/dev/null

demo: install
	@# demo-run/ is the demo's own output (git-ignored): a new demo replaces the previous one.
	@# The command is not echoed: what the demo prints is its own lines. `make demo SEED=1` for another seed.
	@if [ -d demo-run ]; then echo "replacing the previous demo-run/"; rm -rf demo-run; fi
	@$(BIN)/sightline demo --out demo-run --seed $(SEED)
	@echo "(with make: make demo-serve)"

demo-serve: install
	@# The demo's model in production: service + web app, a drifting stream with unknown images replayed through
	@# the API, then the review queue, the drift alert and the loop's commands; serves until Ctrl-C.
	@$(BIN)/sightline demo --serve --out demo-run --seed $(SEED)

browser:
	@# The web app's tests drive Debian's Chromium through Playwright (Playwright's own browser download cannot
	@# work offline). Installed here when missing and this is root with apt; otherwise those tests skip, saying why.
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	      || echo "chromium could not be installed: the browser tests will be skipped"; \
	  else echo "no /usr/bin/chromium: the browser tests will be skipped (apt-get install chromium)"; fi; \
	fi

# Bytecode caches on (PYTHONDONTWRITEBYTECODE unset for this command; __pycache__ is ignored by git): each pytest
# worker otherwise rewrites every test file's asserts again, about 2.6 s a worker each run.
test: install browser
	SIGHTLINE_TEST_DATABASE_URL=$${SIGHTLINE_TEST_DATABASE_URL:-$(TEST_DATABASE_URL)} PYTHONDONTWRITEBYTECODE= \
	  $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

clean-venv:
	rm -rf $(VENV)
