# Two jobs on a fresh machine: `make demo` and `make test`. Each one creates
# the virtual environment and installs what is missing first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,ray,hf,lightning,tuningfree]'
	touch $(STAMP)

# The main job: train a small controller, compare it with tuned schedules (~10 min).
demo: $(STAMP)
	$(VENV)/bin/lrpilot demo --out runs/demo

# pytest exits 5 when it collects no tests: that is a failure, said plainly.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -m "not slow"; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	  exit $$rc

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: $(STAMP)
	$(PY) experiments/benchmarks/bench_workloads.py
	$(PY) experiments/benchmarks/bench_env.py
	$(PY) experiments/benchmarks/bench_train.py
	$(PY) experiments/benchmarks/bench_backends.py
	$(PY) experiments/benchmarks/bench_scheduler.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
