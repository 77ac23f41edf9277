# BlueWren: `make run` starts a node on its embedded defaults, `make test` runs everything CI runs.
PYTHON ?= python3
PORT ?= 8470
DATA_DIR ?= bluewren-data
export PIP_DISABLE_PIP_VERSION_CHECK = 1
export PIP_ROOT_USER_ACTION = ignore

.PHONY: install run test lint rust-test py-test stubtest bench fuzz clean

## Build the Rust engine, the Cython protocol and the package (editable), with test tools.
install:
	$(PYTHON) -m pip install -q -e '.[test]'

## Run a node on its embedded defaults: SQLite store in $(DATA_DIR), ws://127.0.0.1:$(PORT)/.
run: install
	$(PYTHON) -m bluewren serve --port $(PORT) --data-dir $(DATA_DIR)

## Everything CI checks: formatting, lints, types, Rust tests, Python tests.
test: install lint rust-test py-test

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(PYTHON) -m ruff check $(wildcard python tests benchmarks loadtest examples tools)
	$(PYTHON) -m ruff format --check $(wildcard python tests benchmarks loadtest examples tools)
	$(PYTHON) -m mypy
	$(MAKE) stubtest

stubtest:
	$(PYTHON) -m mypy.stubtest bluewren._native bluewren._protocol bluewren._sqlite --allowlist .stubtest-allowlist

rust-test:
	cargo build -p bluewren-loadgen
	cargo test --workspace

py-test:
	$(PYTHON) -m pytest -q

## Micro-benchmarks (pytest-benchmark); results land in benchmarks/results/.
bench: install
	$(PYTHON) -m pytest benchmarks -q --benchmark-only --benchmark-json=benchmarks/results/micro.json

## Coverage-guided fuzzing of every decoder (needs the nightly toolchain and cargo-fuzz).
fuzz:
	./fuzz/run.sh

clean:
	cargo clean
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis
