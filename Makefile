# The two commands of the quick start: `make demo` and `make test`.
# Both set up .venv on a fresh machine: torch==2.13.0 first (the CPU build on this machine's disk;
# a bare `torch` would pull a multi-GB CUDA build), then the project with its extras.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.twinstream-installed
# Debian packages the tests use: Redis 7.0 (to check that a Redis without vector sets is refused),
# Chromium (the web page's browser test; Playwright cannot download its own browser here).
SYSTEM_PACKAGES := redis-server chromium
SYSTEM_STAMP := $(VENV)/.system-packages

.PHONY: demo test lint docs install system-packages clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[train,local,dev,api]'
	@touch $(STAMP)

install: $(STAMP)

$(SYSTEM_STAMP): Makefile | $(STAMP)
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@touch $(SYSTEM_STAMP)

system-packages: $(SYSTEM_STAMP)

# ruff for the code; import-linter for the layering of DESIGN.md (contracts in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# The docs site (mkdocs + material, into site/): strict, so a broken link or anchor, or a page left
# out of the nav, fails. The configuration and CLI pages are generated from the code (docs/hooks.py).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# Two pytest workers, each with its own broker and Redis, a file at a time (module fixtures set up
# once): most integration tests wait on services, so two of them share the 2 cores well (19 -> 11
# minutes measured side by side on the busy machine), in the order of tests/conftest.py's
# LONGEST_FIRST (xdist would sort files by their number of tests and leave the one-test demo last).
# Run one file alone with `.venv/bin/pytest F`.
test: $(STAMP) $(SYSTEM_STAMP) lint docs
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder

demo: $(STAMP)
	$(VENV)/bin/twinstream demo --out demo-out

clean:
	rm -rf $(VENV) demo-out .pytest_cache site
