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

.PHONY: run run-system test bench lint demo build clean python

## Build and start the node on its embedded default (no external service).
run:
	$(CARGO) build --release -p kernel-node
	./target/release/kernel-node --listen $(LISTEN)

## The node with the example system: inventory in-process, orders and the
## Python notifier supervised (deploy/system.toml). Ctrl-C stops them all.
run-system: python
	$(CARGO) build --release -p kernel-examples
	./target/release/kernel-system --config deploy/system.toml --listen $(LISTEN)

## Every test: unit, property and end-to-end (real node, real plugin processes).
test: python
	$(CARGO) build --workspace --bins --tests
	KERNEL_TEST_PYTHON=$(abspath $(VENV)/bin/python) KERNEL_TEST_PYTHONPATH=$(abspath $(PY_STUBS)) \
	  $(CARGO) test --workspace --no-fail-fast

## The Python environment and the stubs (rebuilt when the protos change).
python: $(PY_STUBS)/.stamp

$(VENV)/.stamp: Makefile
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check grpcio grpcio-tools protobuf \
	  googleapis-common-protos
	touch $@

$(PY_STUBS)/.stamp: $(VENV)/.stamp proto/kernel/v1/kernel.proto proto/kernel/v1/admin.proto
	mkdir -p $(PY_STUBS)
	$(VENV)/bin/python -m grpc_tools.protoc -I proto --python_out=$(PY_STUBS) \
	  --grpc_python_out=$(PY_STUBS) proto/kernel/v1/kernel.proto proto/kernel/v1/admin.proto
	touch $@

## Side-by-side measurements (kernel vs direct tonic vs NATS when reachable).
bench:
	$(CARGO) build --release -p kernel-node -p kernel-bench -p plugin-host
	./target/release/kernel-bench

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
