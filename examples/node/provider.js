#!/usr/bin/env node
// node-greeter: a kernel provider in plain Node.js over one Register stream
// (PROTOCOL §5). It provides
//   node.greet  {"name": n}  ->  {"greeting": "hello, n", "path": <x-kernel-context>}
//               (an optional "delay_ms" makes it wait first, to watch cancels)
//   node.fail   always fails with NOT_FOUND, as a Failure in its CallResult,
//               so the caller gets the kernel's Failure with its causality.
// It is a leaf: it makes no nested calls, publishes nothing, so it forwards
// the invocation's context headers nowhere.
//
// The session: hello up, welcome down (READY is printed on stdout then),
// invocations run concurrently, results and heartbeats up, cancels stop the
// work they name, drain finishes the work in flight, half-closes and exits.
// A lost session (node gone, stream broken, hello refused) is opened again
// with backoff (100 ms doubling to 5 s). SIGTERM/SIGINT: finish what runs,
// half-close, wait for the kernel to end the stream, exit 0.
//
//   KERNEL_URL=http://127.0.0.1:50051 node provider.js
'use strict';

const { kernelClient, codeName, Code } = require('./kernel');

const PLUGIN = 'node-greeter';
const MAX_CONCURRENCY = 16;
const SHUTDOWN_WAIT_MS = 5000;

const log = (...args) => console.error(`[${PLUGIN}]`, ...args);

// A failure to hand back to the caller: a gRPC code number and a message.
class KernelFailure extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

// Waits `ms`, or rejects as soon as `signal` aborts (a cancel frame came).
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) return reject(signal.reason);
    const timer = setTimeout(resolve, ms);
    if (signal) {
      signal.addEventListener('abort', () => {
        clearTimeout(timer);
        reject(signal.reason);
      }, { once: true });
    }
  });
}

function jsonArgs(inv) {
  try {
    return JSON.parse(inv.payload.toString('utf8') || 'null');
  } catch (err) {
    throw new KernelFailure(Code.INVALID_ARGUMENT, `${inv.service}: arguments are not JSON: ${err.message}`);
  }
}

// The handlers: (invocation, AbortSignal) -> reply object, or throw.
const HANDLERS = {
  'node.greet': async (inv, signal) => {
    const args = jsonArgs(inv);
    if (!args || typeof args.name !== 'string') {
      throw new KernelFailure(Code.INVALID_ARGUMENT, 'node.greet: expected {"name": "<string>"}');
    }
    if (args.delay_ms) await sleep(Number(args.delay_ms), signal);
    return { greeting: `hello, ${args.name}`, path: inv.headers['x-kernel-context'] };
  },
  'node.fail': async () => {
    throw new KernelFailure(Code.NOT_FOUND, 'node.fail: there is nothing here, by design');
  },
};

function failureFrom(err) {
  if (err instanceof KernelFailure) return { code: err.code, message: err.message, causality: [] };
  return { code: Code.INTERNAL, message: `${PLUGIN}: ${err && err.message ? err.message : err}`, causality: [] };
}

let stopping = false;       // SIGTERM/SIGINT received
let onStop = () => {};      // what the current phase does about it

// One Register session. Resolves 'drained' or 'stopped' when it ended as we
// asked; rejects with the stream's error when it was lost.
function serveOnce(client, onRegistered) {
  return new Promise((resolve, reject) => {
    const call = client.Register();
    const inflight = new Map();   // call_id -> AbortController
    let pending = [];             // results waiting for the next frame up
    let flushScheduled = false;
    let heartbeat = null;
    let closing = null;           // 'drained' | 'stopped' once we decided to end
    let halfClosed = false;
    let settled = false;

    const settle = (err) => {
      if (settled) return;
      settled = true;
      clearInterval(heartbeat);
      for (const ac of inflight.values()) ac.abort(new Error('session ended'));
      inflight.clear();
      if (closing && (!err || err.code === Code.OK)) resolve(closing);
      else reject(err || Object.assign(new Error('the kernel ended the session'), { code: Code.UNAVAILABLE }));
    };

    const send = (frame) => {
      if (!halfClosed && !settled) call.write(frame);
    };

    // Results of several invocations that finish together go up in one frame.
    const flush = () => {
      flushScheduled = false;
      if (pending.length) {
        send({ results: pending });
        pending = [];
      }
      maybeHalfClose();
    };

    // Draining or stopping: once nothing runs and every result went up,
    // half-close; the kernel deregisters us and ends the stream (status OK).
    const maybeHalfClose = () => {
      if (closing && !halfClosed && inflight.size === 0 && pending.length === 0) {
        halfClosed = true;
        clearInterval(heartbeat);
        call.end();
      }
    };

    const close = (why) => {
      if (closing) return;
      closing = why;
      maybeHalfClose();
    };

    const run = (inv) => {
      const id = inv.call_id;
      const ac = new AbortController();
      inflight.set(id, ac);
      const handler = HANDLERS[inv.service];
      Promise.resolve()
        .then(() => {
          if (!handler) throw new KernelFailure(Code.UNIMPLEMENTED, `${PLUGIN} does not provide ${inv.service}`);
          return handler(inv, ac.signal);
        })
        .then(
          (reply) => ({ call_id: id, payload: Buffer.from(JSON.stringify(reply)), content_type: 'application/json' }),
          (err) => ({ call_id: id, error: failureFrom(err) }),
        )
        .then((result) => {
          if (inflight.get(id) !== ac) return; // cancelled: no result is expected
          inflight.delete(id);
          pending.push(result);
          if (!flushScheduled) {
            flushScheduled = true;
            setImmediate(flush);
          }
        });
    };

    call.on('data', (frame) => {
      if (frame.welcome) {
        const every = Number(frame.welcome.heartbeat_interval_ms) || 5000;
        // Any frame counts as liveness; heartbeats are for idle stretches.
        heartbeat = setInterval(() => send({ heartbeat: true }), every);
        log(`registered as ${frame.welcome.instance_id} (heartbeat every ${every} ms)`);
        onRegistered();
        console.log('READY');
      }
      for (const inv of frame.invocations) run(inv);
      for (const id of frame.cancels) {
        const ac = inflight.get(id);
        if (ac) {
          inflight.delete(id);
          ac.abort(new Error('cancelled by the kernel'));
          log(`call ${id} cancelled`);
        }
      }
      if (frame.cancels.length) maybeHalfClose();
      if (frame.drain) {
        log(`draining: ${frame.drain.reason}`);
        close('drained');
      }
    });
    call.on('error', (err) => settle(err));
    call.on('end', () => settle(null));

    onStop = () => close('stopped');
    call.write({
      hello: {
        plugin: PLUGIN,
        instance_id: process.env.KERNEL_INSTANCE_ID || '',
        services: [{ name: 'node.greet' }, { name: 'node.fail' }],
        max_concurrency: MAX_CONCURRENCY,
        mode: 'REGISTER_MODE_POOL',
      },
    });
  });
}

function main() {
  const client = kernelClient();
  let backoff = 100;
  let wake = null;

  const stop = () => {
    if (stopping) process.exit(0); // a second signal: do not wait
    stopping = true;
    log('stopping');
    setTimeout(() => {
      log(`not closed after ${SHUTDOWN_WAIT_MS} ms; exiting`);
      process.exit(0);
    }, SHUTDOWN_WAIT_MS).unref();
    onStop();
    if (wake) wake();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  const loop = async () => {
    while (!stopping) {
      try {
        const how = await serveOnce(client, () => { backoff = 100; });
        log(how === 'drained' ? 'drained; exiting' : 'session closed');
        break;
      } catch (err) {
        if (stopping) break;
        log(`session lost: ${codeName(err.code)} ${err.details || err.message} - retrying in ${backoff} ms`);
      }
      onStop = () => {};
      await new Promise((resolve) => {
        wake = resolve;
        setTimeout(resolve, backoff);
      });
      wake = null;
      backoff = Math.min(backoff * 2, 5000);
    }
    client.close();
    process.exit(0);
  };
  loop();
}

main();
