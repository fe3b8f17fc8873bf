# Two commands do everything on a fresh machine:  make demo  and  make test
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
STAMP    = $(VENV)/.installed
TORCH   ?= torch==2.13.0

.PHONY: demo test bench sample-runs install clean

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

test: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev,bench]"
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# regenerate every committed sample-run report (sample_runs/*/report) at the default budget
sample-runs: $(STAMP)
	@for c in sample_runs/*/config.yaml; do d=$$(dirname $$c); echo "== $$d"; \
		$(BIN)/nandoctor diagnose $$c --out $$d/report -q || exit 1; done

clean:
	rm -rf nandoctor-report .pytest_cache
