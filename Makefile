# Every target installs what it needs into .venv first; `make run` and `make test` are all a newcomer types.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 5000
THREADS ?= 64
# gthread holds a thread per open websocket (fine for tens of viewers); WORKER=gevent serves a thousand.
WORKER ?= gthread
CONNECTIONS ?= 2000

.PHONY: install run test bench screenshots demo serve chromium clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,postgres,server]'
	@touch $(STAMP)

run: install
	$(PY) app.py --host $(HOST) --port $(PORT)

demo: install
	STUDIO_DATA_DIR=./demo-data STUDIO_DEMO=1 $(PY) app.py --host $(HOST) --port $(PORT)

serve: install
	@# The same refusal as `python app.py`: no open address without STUDIO_ADMIN_PASSWORD (INSECURE=1 overrides).
	@$(PY) -c 'import os, sys, app; why = app.exposure_refusal("$(HOST)", os.environ.get("STUDIO_ADMIN_PASSWORD"), bool("$(INSECURE)")); why and sys.exit("studio-history: " + why.replace("pass --insecure", "set INSECURE=1"))'
	$(VENV)/bin/gunicorn -w 1 -k $(WORKER) $(if $(filter gevent,$(WORKER)),--worker-connections $(CONNECTIONS),--threads $(THREADS)) --no-control-socket -b $(HOST):$(PORT) 'app:create_app()'

chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "The browser tests need Debian's chromium package: sudo apt-get install chromium" >&2; exit 1; \
	fi

test: install chromium
	@if [ -z "$$STUDIO_TEST_POSTGRES_URL" ]; then \
		echo "note: PostgreSQL tests are not collected; to run them, point STUDIO_TEST_POSTGRES_URL at a throw-away database (see README, or run .ci/run as root)"; \
	fi
	$(PY) -m pytest $(PYTEST_ARGS)

# MILLION=1 adds the 1,000,000-job tier to the scale targets (about two minutes more).
bench: install chromium
	STUDIO_BENCH_MILLION=$(MILLION) $(PY) -m bench

screenshots: install chromium
	$(PY) -m bench.screenshots

clean:
	rm -rf $(VENV) *.egg-info
