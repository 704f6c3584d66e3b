# LessIsMore Workbench. Quick start:  make run   |   make test
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501
# localhost: only this machine reaches the app. Serving a class: ADDRESS=0.0.0.0 with LIM_AUTH=on,
# better behind a reverse proxy (README: Serving a class).
ADDRESS ?= localhost
export LIM_HOME ?= $(CURDIR)/data
# Streamlit's upload cap follows the engine's (engine/settings.py WorkbenchConfig.max_upload_mb).
MAX_UPLOAD_MB = $$($(PY) -c 'from engine.settings import load_config; print(load_config().max_upload_mb)')
# server.py serves app.py plus the route that sets the log-in cookie (docs/security.md, Sessions).
STREAMLIT = $(PY) -m streamlit run server.py --server.port $(PORT) --server.address $(ADDRESS) \
  --server.headless true --browser.gatherUsageStats false --server.fileWatcherType none \
  --server.maxUploadSize $(MAX_UPLOAD_MB)
TLS_DIR ?= $(LIM_HOME)/tls

.PHONY: run run-https test lint venv demo browser-deps clean bench bench-gpu bench-multi-gpu

# The project itself goes in editable (pyproject.toml): the `lim` script, the methods' entry
# points, its packages importable from anywhere. Offline: setuptools comes from requirements-dev.txt.
# --no-compile: no bytecode for all of torch, transformers and ray at install (minutes on 2 cores);
# Python writes it for the modules actually imported, on first import.
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (set PYTHON=python3 to use another)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m engine demo

# A laptop: one person, localhost only, no log-in (LIM_AUTH=off unless set; README: Accounts).
run: demo
	$(STREAMLIT)

# HTTPS with Streamlit's own TLS and a self-signed certificate made once under $(TLS_DIR)
# (TLS_DIR=/etc/... with cert.pem and key.pem of a real one); log-in on unless LIM_AUTH is set.
run-https: demo
	$(PY) -m engine.tls $(TLS_DIR)
	LIM_AUTH=$${LIM_AUTH:-on} $(STREAMLIT) --server.sslCertFile $(TLS_DIR)/cert.pem \
	  --server.sslKeyFile $(TLS_DIR)/key.pem

# Debian's chromium drives the browser journey test (Playwright cannot download a browser here).
browser-deps:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium for the browser test (sudo apt-get install chromium)"; fi; }

# tests/engine/test_ct2.py checks the rebuilt Whisper tokenizer against OpenAI's BPE ranks in the
# openai-whisper sdist; fetch it into the pytest cache once (the test fetches it itself otherwise).
WHISPER_SDIST := .pytest_cache/d/openai-whisper-sdist
# Two pytest-xdist workers, whole files to each (module fixtures build once): much of the suite
# waits on subprocesses, a browser and the app, so two share 2 cores well (28 min, not 40).
TEST_WORKERS ?= 2
test: venv browser-deps
	@ls $(WHISPER_SDIST)/openai_whisper-*.tar.gz >/dev/null 2>&1 || $(PY) -m pip download --quiet \
	  --no-deps --no-binary :all: openai-whisper==20250625 -d $(WHISPER_SDIST) || true
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# What tests/test_architecture.py checks, on its own: ruff and the import contracts.
lint: venv
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports --no-cache

# Training speed and memory, reference recipe against the engine (docs/benchmarks.md).
# bench: tiny presets on the CPU (what CI keeps working); bench-gpu: real Whisper configs on a
# CUDA GPU, the ablation of the engine's optimisations, large-v3's kernel levers and its step
# by kind of work (profiled), and training end to end from audio files (docs/benchmarks.md).
bench: venv
	$(PY) -m benchmarks.train_speed --suite cpu --json benchmarks/results-cpu.json

bench-gpu: venv
	$(PY) -m benchmarks.train_speed --suite gpu --json benchmarks/results-gpu.json
	$(PY) -m benchmarks.train_speed --suite ablation --json benchmarks/results-ablation.json
	$(PY) -m benchmarks.train_speed --suite large-v3-kernels --json benchmarks/results-large-v3-kernels.json
	LIM_BENCH_PROFILE=benchmarks/profile $(PY) -m benchmarks.train_speed --suite large-v3-profile \
		--json benchmarks/results-large-v3-profile.json
	$(PY) -m benchmarks.from_files --model whisper-small --clips 1600 --variants gpu-prefetch,gpu-workers \
		--json benchmarks/results-from-files-small.json
	$(PY) -m benchmarks.from_files --model whisper-large-v3 --clips 1000 --variants gpu-prefetch,gpu-workers \
		--set gradient_checkpointing=true --home /tmp/lim-from-files-large --json benchmarks/results-from-files-large.json

# Multi-GPU scaling (1 vs 2 GPUs), loss parity and 2-GPU command-line runs with stop + resume
# (docs/multi-gpu.md); needs 2 CUDA GPUs.
bench-multi-gpu: venv
	$(PY) -m benchmarks.multi_gpu --json benchmarks/results-multi-gpu.json --cli

clean:
	rm -rf $(VENV) .pytest_cache
