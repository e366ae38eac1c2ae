# Everything the project needs is installed by these targets into .venv (Python 3.10+).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out
STAMP := $(VENV)/.installed

.PHONY: demo test lint serve gateway perf clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[server,dev,gateway]'
	# facenet-pytorch pins an old torch; we only read its shipped MTCNN weights, so skip its deps.
	$(BIN)/pip install --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/talkinghead demo --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check python_backends client tests perf

serve: $(STAMP)
	$(BIN)/talkinghead serve

gateway: $(STAMP)
	$(BIN)/talkinghead gateway

perf: $(STAMP)
	$(BIN)/python perf/bench_models.py --out perf/results/models_cpu.json

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
