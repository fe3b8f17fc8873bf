# Two commands do everything on a fresh machine:  make demo  and  make test
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
STAMP    = $(VENV)/.installed
TORCH   ?= torch==2.13.0

.PHONY: demo test bench sample-runs install clean chromium

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned, so pip takes the CPU wheel and the package's range is already satisfied
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/nandoctor diagnose sample_runs/demo/config.yaml --out nandoctor-report --budget 60

# two workers, one per core: every test runs torch on one thread (tests/conftest.py)
test: $(STAMP) chromium
	$(BIN)/python -m pytest -p no:cacheprovider -n 2

# the browser test of the letter (tests/test_letter_browser.py) needs Chromium: Debian's package when we are
# root and apt works, else the test skips and says so
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y chromium >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y chromium >/dev/null 2>&1; } \
		|| echo "chromium could not be installed: the browser test of the letter will skip"; \
	else echo "no chromium (and not root with apt): the browser test of the letter will skip"; fi

bench: $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev,bench]"
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# regenerate every committed sample-run report (sample_runs/*/report) at the default budget
sample-runs: $(STAMP)
	@for c in sample_runs/*/config.yaml; do d=$$(dirname $$c); echo "== $$d"; \
		$(BIN)/nandoctor diagnose $$c --out $$d/report -q || exit 1; done

clean:
	rm -rf nandoctor-report .pytest_cache
