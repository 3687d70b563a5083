# Two entry points: `make demo` (offline, end to end) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-out

.PHONY: demo test install lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[serve,notebooks,dev,distributed,fast]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pixdex demo $(DEMO_DIR)

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check indexer search classify pixdex tests benchmarks

# The quick benchmarks (minutes on 2 cores); each prints ratios against a peer run in the same process.
bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/pipeline_vs_store.py --images 200 --model shapes-clip
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/search_latency.py --quick

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
