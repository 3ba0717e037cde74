#!/usr/bin/env node
// A unary caller and publisher (PROTOCOL §4.1, §6.3).
//
//   node caller.js SERVICE [JSON]             Call: prints the reply payload
//   node caller.js --publish TOPIC [JSON]     Publish: prints {"event_id","matched"}
//
// Options (before the positional arguments):
//   --method M        the method within the service (Call only)
//   --timeout-ms N    the deadline, sent as grpc-timeout (default 5000)
//   --context PATH    x-kernel-context: make the call (or the event) a child
//                     of a live context, e.g. the path a provider was given
//   --header K=V      any other metadata, e.g. traceparent=00-...-01 or
//                     baggage=tenant=acme (repeatable)
//
// JSON defaults to {}. On failure it prints the status code, the kernel's
// message and the causality chain (innermost hop first) decoded from the
// grpc-status-details-bin trailer, on stderr, and exits 1.
//
//   KERNEL_URL=http://127.0.0.1:50051 node caller.js node.greet '{"name":"ada"}'
'use strict';

const { grpc, kernelClient, failureOf, codeName } = require('./kernel');

const PLUGIN = 'node-caller';

function usage() {
  console.error('usage: node caller.js [--method M] [--timeout-ms N] [--context PATH] [--header K=V]... SERVICE [JSON]\n'
    + '       node caller.js --publish [--timeout-ms N] [--context PATH] [--header K=V]... TOPIC [JSON]');
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { publish: false, method: '', timeoutMs: 5000, context: '', headers: [] };
  const rest = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--publish') opts.publish = true;
    else if (a === '--method') opts.method = argv[++i] ?? usage();
    else if (a === '--timeout-ms') opts.timeoutMs = Number(argv[++i] ?? usage());
    else if (a === '--context') opts.context = argv[++i] ?? usage();
    else if (a === '--header') {
      const kv = argv[++i] ?? usage();
      const eq = kv.indexOf('=');
      if (eq < 1) usage();
      opts.headers.push([kv.slice(0, eq).toLowerCase(), kv.slice(eq + 1)]);
    }
    else if (a === '-h' || a === '--help') usage();
    else rest.push(a);
  }
  if (rest.length < 1 || rest.length > 2 || !(opts.timeoutMs > 0)) usage();
  [opts.name, opts.json = '{}'] = rest;
  try {
    JSON.parse(opts.json);
  } catch (err) {
    console.error(`not JSON: ${opts.json} (${err.message})`);
    process.exit(2);
  }
  return opts;
}

function printFailure(err) {
  const f = failureOf(err);
  console.error(`${codeName(f.code)} (${f.code}): ${f.message}`);
  if (err.details && err.details !== f.message) console.error(`  status message: ${err.details}`);
  if (f.causality.length) {
    console.error('  causality, innermost first:');
    for (const hop of f.causality) {
      console.error(`    ${hop.service} (${hop.plugin || '-'}) at ${hop.context || '-'}`);
    }
  }
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const client = kernelClient();
  const metadata = new grpc.Metadata();
  metadata.set('x-kernel-plugin', PLUGIN); // becomes x-kernel-caller downstream
  if (opts.context) metadata.set('x-kernel-context', opts.context);
  for (const [k, v] of opts.headers) metadata.add(k, v);
  // Always send a deadline: the kernel sets none by itself (PROTOCOL §3.4).
  const callOptions = { deadline: new Date(Date.now() + opts.timeoutMs) };
  const payload = Buffer.from(opts.json);

  const done = (err, reply, print) => {
    client.close();
    if (err) {
      printFailure(err);
      process.exit(1);
    }
    print(reply);
  };

  if (opts.publish) {
    client.Publish(
      { topic: opts.name, payload, content_type: 'application/json', headers: {} },
      metadata, callOptions,
      (err, reply) => done(err, reply, (r) => console.log(JSON.stringify({ event_id: r.event_id, matched: r.matched }))),
    );
  } else {
    client.Call(
      { service: opts.name, method: opts.method, payload, content_type: 'application/json' },
      metadata, callOptions,
      (err, reply) => done(err, reply, (r) => console.log(r.payload.toString('utf8'))),
    );
  }
}

main();
