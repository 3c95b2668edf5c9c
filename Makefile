# Every target creates the virtualenv on first use, so a fresh clone needs only `make`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
CASES  ?= cases

.PHONY: parity test lint bench venv clean sweep record parity-replay drift drift-check matrix

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,torch]"
	@touch $(STAMP)

venv: $(STAMP)

## Run every case in cases/ on the synthesized checkpoints; exit 1 on any failure.
parity: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m harness run $(CASES)

## The test suite (what .ci/run calls): two xdist workers (the machine's two cores), one
## module per worker at a time (tests/conftest.py groups them).
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n $(or $(JOBS),2) --dist loadgroup

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

## Recordings (harness/golden.py): record the cases' reference captures under GOLDEN;
## replay them against the live candidates (no reference path runs); or run today's
## reference path against them (what moved, under which versions).
GOLDEN ?= reference
record: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m harness record $(CASES) --out $(GOLDEN)

parity-replay: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m harness run $(CASES) --replay --golden-dir $(GOLDEN)

drift: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m harness drift $(CASES) --golden-dir $(GOLDEN)

## A real version move: record DRIFT_CASES under an older released mlx-vlm (OLD_MLX_VLM,
## in its own venv OLD_VENV), then run them under the pinned one against those recordings.
## Succeeds when the comparison ran (exit 0 or 1: what moved is printed, not a failure).
## mlx-vlm 0.6.17 renders some image prompts differently: 6 Gemma 4 cases move; with
## 0.7.9 nothing moves; 0.6.0 lacks a function the native path calls.
OLD_MLX_VLM ?= 0.6.17
OLD_VENV    ?= .venv-old
DRIFT_CASES ?= $(filter-out cases/_%,$(wildcard cases/*.yaml)) cases/gemma3
DRIFT_OUT   ?= reports/drift-check
drift-check: $(STAMP)
	@test -x $(OLD_VENV)/bin/python || $(PYTHON) -m venv $(OLD_VENV)
	$(OLD_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OLD_VENV)/bin/python -c "import tomllib; print('\n'.join(d for d in \
		tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'] \
		if not d.startswith('mlx-vlm')))" > $(OLD_VENV)/requirements.txt
	$(OLD_VENV)/bin/python -m pip install --quiet -r $(OLD_VENV)/requirements.txt \
		"mlx-vlm==$(OLD_MLX_VLM)"
	$(OLD_VENV)/bin/python -m pip install --quiet -e . --no-deps
	rm -rf $(DRIFT_OUT)/recordings
	HF_HUB_OFFLINE=1 $(OLD_VENV)/bin/python -m harness record $(DRIFT_CASES) \
		--out $(DRIFT_OUT)/recordings
	HF_HUB_OFFLINE=1 $(PY) -m harness drift $(DRIFT_CASES) \
		--golden-dir $(DRIFT_OUT)/recordings --report-dir $(DRIFT_OUT)/report; \
		code=$$?; test $$code -eq 0 -o $$code -eq 1

## The tested matrix (harness/matrix/tested.json, tested.md): every point marked build
## (oldest, newest) gets a venv of its own under MATRIX_VENVS holding its pins, this project
## is pip-installed beside them (pip must keep them), the cases run there and each case's
## outcome is recorded. Slow (a full run per point); not part of `make test`.
MATRIX_VENVS ?= $(HOME)/.cache/mlx-parity/venvs
matrix: $(STAMP)
	$(PY) -m harness.matrix.build --venvs $(MATRIX_VENVS) --cases $(CASES)

clean:
	rm -rf reports/latest .pytest_cache
