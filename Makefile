# Everything the project needs is installed by these targets into .venv (Python 3.10+).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out
STAMP := $(VENV)/.installed
WAN22 := wan22==2.2.11

.PHONY: demo test lint serve gateway perf perf-tools reliability parity clean chromium

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[server,dev,gateway,parity]'
	# facenet-pytorch pins an old torch; we only read its shipped MTCNN weights, so skip its deps.
	$(BIN)/pip install --no-deps facenet-pytorch==2.6.0
	# The official Wan2.2 code, the oracle of tests/parity: its own requirements (torchvision, decord, dashscope,
	# flash_attn) cannot be installed beside the CPU torch; the `parity` extra holds what its modules import.
	$(BIN)/pip install --no-deps $(WAN22)
	# framelift's own RIFE 4.26 IFNet is the test oracle of ours; its deps would add opencv-python beside headless.
	$(BIN)/pip install --no-deps framelift-video==2.1.0
	# MediaPipe's .tflite files (BlazeFace, Face Mesh, BlazePose; Apache-2.0) out of the mediapipe wheel, which
	# is downloaded, never installed: its runtime pins protobuf<5, which clashes with tritonclient.
	$(BIN)/python -m python_backends.mediapipe_models.files
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/talkinghead demo --out $(OUT)

# Then the reliability suite's Triton part once more on the GPU profile's configs (issue 19), moved to the CPU
# here (tests/profile_repositories.py): bad input and faults keep their behaviour there too.
RELIABILITY_ON_GPU_PROFILE := tests/reliability/test_faults.py tests/reliability/test_malformed_requests.py \
	tests/reliability/test_bad_inputs.py tests/reliability/test_security.py tests/reliability/test_properties.py

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q tests
	$(BIN)/python -m pytest -q $(RELIABILITY_ON_GPU_PROFILE) --model-config-name gpu

# Debian's chromium + chromedriver for the review page's browser test (tests/integration/test_review_page.py, driven
# by Selenium from the dev extra). Installed when missing; where apt cannot install them the test skips and says so.
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
		echo "chromium could not be installed: the browser test will skip"

lint: $(STAMP)
	$(BIN)/ruff check python_backends client tests perf

serve: $(STAMP)
	$(BIN)/talkinghead serve

gateway: $(STAMP)
	$(BIN)/talkinghead gateway

# perf_analyzer lives in its own venv: the binary ships only in tritonclient wheels 2.50-2.55 (the app keeps a
# current tritonclient); it also needs libb64 (perf/get_libb64.sh) and libcudart (a pip wheel), even on CPU.
PERF_VENV ?= .venv-perf
PERF_STAMP := $(PERF_VENV)/.installed

$(PERF_STAMP): Makefile perf/get_libb64.sh
	$(PYTHON) -m venv $(PERF_VENV)
	$(PERF_VENV)/bin/pip install 'tritonclient==2.51.0' 'nvidia-cuda-runtime-cu12'
	sh perf/get_libb64.sh $(PERF_VENV)/lib/b64
	touch $(PERF_STAMP)

perf-tools: $(PERF_STAMP)

perf: $(STAMP) $(PERF_STAMP)
	$(BIN)/python perf/bench_models.py --out perf/results/models_cpu.json
	$(BIN)/python perf/perf_analyzer_sweeps.py --venv $(PERF_VENV) --out perf/results/perf_analyzer_cpu.json

reliability: $(STAMP)
	$(BIN)/python perf/reliability.py --out perf/results/reliability.json

parity: $(STAMP)
	$(BIN)/python perf/parity.py --out perf/results/parity_cpu.json

clean:
	rm -rf $(VENV) $(PERF_VENV) $(OUT) .pytest_cache .ruff_cache
