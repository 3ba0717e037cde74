#!/usr/bin/env bash
# make demo: start a node, an out-of-process plugin, make a call, stop all.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-50071}
./target/release/kernel-node --listen 127.0.0.1:$PORT &
NODE=$!
trap 'kill $NODE $PLUGIN 2>/dev/null || true' EXIT
sleep 0.5
./target/release/greeter http://127.0.0.1:$PORT &
PLUGIN=$!
for _ in $(seq 1 50); do
  if ./target/release/call http://127.0.0.1:$PORT greet.hello '{"name":"demo"}' 2>/dev/null; then
    ./target/release/in-process
    exit 0
  fi
  sleep 0.1
done
echo "demo: the greeter never answered" >&2
exit 1
