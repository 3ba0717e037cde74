#!/usr/bin/env node
// A subscriber with explicit acks (PROTOCOL §6.5): subscribes to the pattern
// given as the first argument (default `order.*`), prints SUBSCRIBED once the
// kernel confirmed the subscription (its `ready` frame), then one JSON line
// per event on stdout:
//   {"topic": ..., "payload": <the payload parsed as JSON, or its text>,
//    "context": <x-kernel-context of this delivery>, "traceparent": <or null>}
// and acks each delivery after printing it. A lost stream (the node went
// away) is opened again with backoff, and SUBSCRIBED printed again;
// SIGTERM/SIGINT cancel the stream and exit 0.
//
//   KERNEL_URL=http://127.0.0.1:50051 node subscriber.js 'order.*'
'use strict';

const { kernelClient, codeName } = require('./kernel');

const PATTERN = process.argv[2] || 'order.*';
const NAME = 'node-subscriber';

const log = (...args) => console.error(`[${NAME}]`, ...args);

function parsePayload(buf) {
  const text = buf.toString('utf8');
  try {
    return JSON.parse(text);
  } catch (_) {
    return text; // not JSON: shown as text
  }
}

let current = null;   // the open Subscribe call
let stopping = false;

// One subscription. Resolves when the stream ended; rejects with its error.
function subscribeOnce(client, onReady) {
  return new Promise((resolve, reject) => {
    const call = client.Subscribe();
    current = call;
    call.on('data', (down) => {
      if (down.ready) {
        log(`subscribed to ${PATTERN} as ${down.ready.subscription_id}`);
        onReady();
        console.log('SUBSCRIBED');
      }
      if (!down.events.length) return;
      for (const ev of down.events) {
        console.log(JSON.stringify({
          topic: ev.topic,
          payload: parsePayload(ev.payload),
          context: ev.headers['x-kernel-context'] ?? null,
          traceparent: ev.headers.traceparent ?? null,
        }));
      }
      // Handled: ack every delivery of the frame at once. Ack the
      // delivery_id (new for each delivery), not the event id.
      call.write({ acks: down.events.map((ev) => ev.delivery_id) });
    });
    call.on('error', reject);
    call.on('end', resolve);
    call.write({
      open: {
        patterns: [PATTERN],
        ack_mode: 'ACK_MODE_EXPLICIT',
        window: 64,          // at most 64 deliveries unacked at once
        ack_wait_ms: 10000,  // redelivered when not acked within 10 s
        max_deliver: 5,      // then dead-lettered to $dlq.<topic>
        name: NAME,
      },
    });
    // The upstream stays open: half-closing it would stop nothing, but acks
    // could no longer be sent.
  });
}

async function main() {
  const client = kernelClient();
  let backoff = 100;
  let wake = null;
  const stop = () => {
    stopping = true;
    if (current) current.cancel();
    if (wake) wake();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  while (!stopping) {
    try {
      await subscribeOnce(client, () => { backoff = 100; });
      if (!stopping) log(`the kernel ended the subscription - resubscribing in ${backoff} ms`);
    } catch (err) {
      if (stopping) break;
      log(`subscription lost: ${codeName(err.code)} ${err.details || err.message} - resubscribing in ${backoff} ms`);
    }
    if (stopping) break;
    await new Promise((resolve) => {
      wake = resolve;
      setTimeout(resolve, backoff);
    });
    wake = null;
    backoff = Math.min(backoff * 2, 5000);
  }
  client.close();
  process.exit(0);
}

main();
