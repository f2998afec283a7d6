# One command sets up and runs the demo, one sets up and runs the tests (see README).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= ../shared/data/real-cxr
OUT    ?= out/demo

.PHONY: setup demo demo-full demo-phantoms test test-fast clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision are pinned; pip on Python 3.11 here takes them from local disk
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test,export]"
	touch $@

setup: $(VENV)/.installed

# quick demo (< 10 min on 2 CPU cores) on the real pack when present, else on generated phantoms
demo: setup
	@if [ -d "$(DATA)" ]; then \
	  HF_HUB_OFFLINE=1 $(VENV)/bin/leader demo --data-root $(DATA) --out $(OUT) --quick; \
	else \
	  echo "$(DATA) not found: running on generated chest phantoms"; \
	  HF_HUB_OFFLINE=1 $(VENV)/bin/leader demo --out $(OUT) --quick; \
	fi

# the full demo on the real pack (< 60 min on 2 CPU cores)
demo-full: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/leader demo --data-root $(DATA) --out out/demo-full

demo-phantoms: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/leader demo --out out/demo-phantoms --quick

test: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q

test-fast: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q -m "not slow"

clean:
	rm -rf out .pytest_cache
