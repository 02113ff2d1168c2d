# The two quick-start commands are `make demo` and `make test`; each sets everything up itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

export DAGSTER_HOME ?= $(CURDIR)/var/dagster
# One thread per process: on small shared machines more threads stall torch badly.
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1

.PHONY: install browser demo test test-fast lint format rehearse ui review gpu-runtime clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	# torch and torchvision are pinned together in pyproject.toml; pip installs them in one go.
	$(PY) -m pip install --quiet --editable '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# The review app's browser test drives Debian's chromium (never a downloaded browser build).
browser:
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium for the review app's browser test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

demo: install
	$(PY) -m idglow.cli demo

test: install browser
	$(PY) -m pytest

# The unit tests only: no servers, no browser, no training runs through Dagster (a minute or two).
test-fast: install
	$(PY) -m pytest -m "not slow"

# ruff, configured in pyproject.toml; CI runs `make lint` before `make test`.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The real profile end to end on a rehearsal models directory and a 1024² CelebA-HQ tree
# (docs/real_profile.md): a fresh storage root each time; the models and the data are kept.
rehearse: install
	$(PY) -m pipelines.rehearse

review: install
	$(VENV)/bin/idglow review serve --host 127.0.0.1 --port 8765

ui: install
	@$(PY) -m pipelines.instance >/dev/null  # links dagster.yaml and creates the storage once, under a lock
	$(VENV)/bin/dagster-webserver -w workspace.yaml -h 127.0.0.1 -p 3000

# GPU machines: onnxruntime and onnxruntime-gpu install the same module, so swap one for the other;
# and the fp8 extra (torchao) for fp8_transformer.
gpu-runtime: install
	$(PY) -m pip install --quiet --editable '.[dev,fp8]'
	$(PY) -m pip uninstall --yes onnxruntime
	$(PY) -m pip install --quiet onnxruntime-gpu==1.31.1

clean:
	rm -rf var .pytest_cache
