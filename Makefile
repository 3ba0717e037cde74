# The two commands: `make run` and `make test`. Nothing here downloads a
# prebuilt binary; protobuf is compiled by protox (pure Rust), so no protoc.
CARGO ?= cargo
LISTEN ?= 127.0.0.1:50051

.PHONY: run test bench lint demo build clean

## Build and start the node on its embedded default (no external service).
run:
	$(CARGO) build --release -p kernel-node
	./target/release/kernel-node --listen $(LISTEN)

## Every test: unit, property and end-to-end (real node, real plugin processes).
test:
	$(CARGO) build --workspace --bins --tests
	$(CARGO) test --workspace --no-fail-fast

## Side-by-side measurements (kernel vs direct tonic vs NATS when reachable).
bench:
	$(CARGO) build --release -p kernel-node -p kernel-bench
	./target/release/kernel-bench

## fmt check + clippy with warnings as errors.
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## A node, an out-of-process plugin and a call, end to end.
demo:
	$(CARGO) build --release -p kernel-node -p kernel-examples
	./examples/demo.sh

build:
	$(CARGO) build --workspace

clean:
	$(CARGO) clean
