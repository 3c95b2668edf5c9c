# Every target creates the virtualenv on first use, so a fresh clone needs only `make`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
CASES  ?= cases

.PHONY: parity test lint bench venv clean sweep

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

## Run every case in cases/ on the synthesized checkpoints; exit 1 on any failure.
parity: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m harness run $(CASES)

## The test suite (what .ci/run calls).
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check harness tests

## Benchmarks (pytest-benchmark), saved under reports/bench/ and compared with the last run.
bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest benchmarks -q --benchmark-enable --benchmark-only \
		--benchmark-storage=reports/bench --benchmark-autosave \
		$$(ls reports/bench/*/*.json >/dev/null 2>&1 && echo --benchmark-compare)

## Randomized sweep: N generated cases from SEED, run and classified (harness/sweep.py);
## writes OUT (default reports/sweep): cases/, report/, classification.{json,parquet}.
sweep: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m harness.sweep --n $(or $(N),50) --seed $(or $(SEED),0) \
		--out $(or $(OUT),reports/sweep)

clean:
	rm -rf reports/latest .pytest_cache
