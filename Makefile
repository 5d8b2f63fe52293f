# Two entry points for a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dsqc-installed
# torch first, pinned to the CPU build (a bare `torch` resolves to a multi-GB CUDA build).
TORCH  := torch==2.13.0

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[torch,tflite,demo,dev,bench,ray]'
	touch $(STAMP)

demo: setup
	$(BIN)/dsqc build models/mnist_cnn.onnx --target onnx --calib mnist -o out/demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check compiler passes backends models tools tests
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m tools.bench

clean:
	rm -rf $(VENV) out build dist *.egg-info
