# The README's two commands: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROMPT ?= Once upon a time, there was a little

.PHONY: install run serve test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned to the CPU wheel on local disk, so nothing below can pull a CUDA build.
install: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,bench,serve]'

run: install
	$(BIN)/hybridllm run --model default --max-tokens 48 "$(PROMPT)"

# The main job: tritonserver (from the nvidia-pytriton wheel) serving the default model on
# 127.0.0.1:8000 (HTTP), :8001 (gRPC), :8002 (metrics) until Ctrl-C. SERVE_ARGS="--policy ..." adds options.
serve: install
	$(BIN)/hybridllm serve --model default $(SERVE_ARGS)

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/generate_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
