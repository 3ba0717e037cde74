#!/usr/bin/env bash
# make demo: the example system (deploy/system.toml) and an order flow
# through it: orders (Rust, supervised) calls inventory (Rust, in-process),
# emits order.created, and the notifier (Python, supervised) hears it.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-50071}
URL=http://127.0.0.1:$PORT
KERNEL_TELEMETRY__ADMIN_LISTEN= ./target/release/kernel-system \
  --config deploy/system.toml --listen 127.0.0.1:$PORT &
NODE=$!
trap 'kill -TERM $NODE 2>/dev/null; wait $NODE 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if ./target/release/call $URL notify.send '"ready?"' >/dev/null 2>&1 \
     && ./target/release/call $URL inventory.check_stock '{"sku":"sku-1"}' >/dev/null 2>&1; then
    break
  fi
  sleep 0.1
done
echo "== orders.create (orders → inventory.reserve, then order.created in a transaction)"
./target/release/call $URL orders.create '{"sku":"sku-1","qty":2}'
sleep 0.3
echo "== notify.send (what the Python notifier heard: the event and its context path)"
./target/release/call $URL notify.send '"order placed"'
echo "== orders.create for more than the stock (FAILED_PRECONDITION from inventory, with causality)"
./target/release/call $URL orders.create '{"sku":"sku-2","qty":50}' || true
