# The two commands: `make run` and `make test`. Nothing here downloads a
# prebuilt binary; protobuf is compiled by protox (pure Rust), so no protoc.
CARGO ?= cargo
LISTEN ?= 127.0.0.1:50051
# Python for the example notifier and the tests that run it: a virtual
# environment under the build directory, packages from PyPI, stubs
# generated from proto/ (grpcio-tools brings its own protoc).
BUILD ?= build
VENV := $(BUILD)/venv
PY_STUBS := $(BUILD)/py

.PHONY: run run-system test bench bench-check bench-baseline lint demo build clean python test-python python-checks bench-python node-example fuzz

## Build and start the node on its embedded default (no external service).
run:
	$(CARGO) build --release -p kernel-node
	./target/release/kernel-node --listen $(LISTEN)

## The node with the example system: inventory in-process, orders and the
## Python notifier supervised (deploy/system.toml). Ctrl-C stops them all.
run-system: python
	$(CARGO) build --release -p kernel-examples
	./target/release/kernel-system --config deploy/system.toml --listen $(LISTEN)

## Every test: unit, property and end-to-end (real node, real plugin processes,
## a real PostgreSQL: DATABASE_URL, else the local server, else a throwaway
## cluster, see tests/pg-up). Then the Python SDK's own checks (mypy, pytest
## against a real node).
test: python node-example
	$(CARGO) build --workspace --bins --tests
	pg="$$(tests/pg-up $(BUILD))" && KERNEL_TEST_DATABASE_URL="$$pg" \
	KERNEL_TEST_PYTHON=$(abspath $(VENV)/bin/python) KERNEL_TEST_PYTHONPATH=$(abspath $(PY_STUBS)) \
	  $(CARGO) test --workspace --no-fail-fast
	$(MAKE) --no-print-directory python-checks

## The Python environment and the stubs (rebuilt when the protos change),
## with the Python SDK installed (reinstalled when its sources change).
python: $(PY_STUBS)/.stamp

PY_SDK := $(shell find sdk-python/kernel_sdk -name '*.py' -not -path '*/_gen/*') \
  sdk-python/pyproject.toml sdk-python/setup.py sdk-python/gen_proto.py

$(VENV)/.stamp: Makefile $(PY_SDK) proto/kernel/v1/kernel.proto proto/kernel/v1/admin.proto
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check grpcio grpcio-tools protobuf \
	  googleapis-common-protos
	$(VENV)/bin/pip install --quiet --disable-pip-version-check './sdk-python[otel,test]' \
	  opentelemetry-exporter-otlp-proto-grpc 'psycopg[binary]'
	touch $@

## The Python SDK: mypy (stubs generated in its tree for it), then its tests
## against a real node (the debug build of kernel-node).
test-python: python
	$(CARGO) build -p kernel-node
	$(MAKE) --no-print-directory python-checks

python-checks:
	$(VENV)/bin/python sdk-python/gen_proto.py
	$(VENV)/bin/mypy --config-file sdk-python/pyproject.toml sdk-python/kernel_sdk
	KERNEL_NODE_BIN=$(abspath target/debug/kernel-node) $(VENV)/bin/pytest sdk-python/tests -q

## Python SDK call latency and throughput: through the (release) node vs a
## direct grpc.aio call; uvloop when PyPI has it for this Python.
bench-python: python
	$(CARGO) build --release -p kernel-node
	-$(VENV)/bin/pip install --quiet --disable-pip-version-check uvloop
	KERNEL_NODE_BIN=$(abspath target/release/kernel-node) $(VENV)/bin/python sdk-python/bench/bench_call.py

$(PY_STUBS)/.stamp: $(VENV)/.stamp proto/kernel/v1/kernel.proto proto/kernel/v1/admin.proto
	mkdir -p $(PY_STUBS)
	$(VENV)/bin/python -m grpc_tools.protoc -I proto --python_out=$(PY_STUBS) \
	  --grpc_python_out=$(PY_STUBS) proto/kernel/v1/kernel.proto proto/kernel/v1/admin.proto
	touch $@

## The Node.js example's packages, exactly as examples/node/package-lock.json pins them.
node-example: examples/node/node_modules/.stamp

examples/node/node_modules/.stamp: examples/node/package.json examples/node/package-lock.json
	npm ci --prefix examples/node --no-audit --no-fund
	touch $@

## Side-by-side measurements (kernel vs direct tonic vs NATS when reachable).
bench: python
	$(CARGO) build --release -p kernel-node -p kernel-bench -p plugin-host
	BENCH_DATABASE_URL="$$(tests/pg-up $(BUILD))" ./target/release/kernel-bench
	$(MAKE) --no-print-directory bench-python

## Instructions per in-process call, emit and trie match (valgrind
## callgrind: repeatable on a noisy machine) against the committed
## baseline; fails on a regression over 5 %. Not part of `make test`.
bench-check:
	$(CARGO) build --release -p kernel-bench
	python3 bench/check.py target/release/kernel-bench

## Writes the current figures as the baseline (after an intended change).
bench-baseline:
	$(CARGO) build --release -p kernel-bench
	python3 bench/check.py target/release/kernel-bench --update

## Fuzz every parser of outside input, FUZZ_SECS seconds per target (cargo-fuzz
## on nightly; installs cargo-fuzz if missing). Not part of `make test`; see
## docs/FUZZING.md.
FUZZ_SECS ?= 20
FUZZ_TARGETS := topic pattern_match context_path budget_header traceparent baggage grpc_timeout

fuzz:
	cargo +nightly fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECS) || exit 1; \
	done

## fmt check + clippy with warnings as errors.
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## The example system and an order flow through it, printed.
demo: python
	$(CARGO) build --release -p kernel-examples
	./examples/demo.sh

build:
	$(CARGO) build --workspace

clean:
	$(CARGO) clean
	rm -rf $(BUILD)
