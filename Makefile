# LessIsMore Workbench. Quick start:  make run   |   make test
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501
export LIM_HOME ?= $(CURDIR)/data

.PHONY: run test venv demo browser-deps clean bench

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (set PYTHON=python3 to use another)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m engine demo

run: demo
	$(PY) -m streamlit run app.py --server.port $(PORT) --server.headless true --browser.gatherUsageStats false

# Debian's chromium drives the browser journey test (Playwright cannot download a browser here).
browser-deps:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium for the browser test (sudo apt-get install chromium)"; fi; }

test: venv browser-deps
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
