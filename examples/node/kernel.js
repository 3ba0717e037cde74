// What the three scripts share: the kernel.v1 client, loaded from
// proto/kernel/v1/kernel.proto at run time (no generated code, no protoc),
// the node's address, and the decoding of the kernel's Failure from a
// failed unary call (PROTOCOL §8.2).
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.join(__dirname, '..', '..', 'proto', 'kernel', 'v1', 'kernel.proto');

// keepCase: the field names of the proto (`call_id`, `x_...`), as PROTOCOL.md
// writes them. longs: String, because uint64 ids (`call_id`, `delivery_id`)
// do not fit a JS number in general; send them back as the same strings.
// enums: String, so `ack_mode: 'ACK_MODE_EXPLICIT'` reads as in the proto.
// defaults: true, so absent scalars read as '' / 0 / false and absent
// message fields (`welcome`, `drain`, `ready`, `error`) as null.
const LOAD_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true };

const definition = protoLoader.loadSync(PROTO, LOAD_OPTIONS);
const kernelV1 = grpc.loadPackageDefinition(definition).kernel.v1;

// KERNEL_URL is `http://host:port` for every plugin (PLUGINS §5); grpc-js
// wants a bare `host:port` target.
function kernelTarget() {
  const url = process.env.KERNEL_URL || 'http://127.0.0.1:50051';
  return url.replace(/^[a-z][a-z0-9+.-]*:\/\//i, '').replace(/\/+$/, '');
}

// Channel options:
// - the kernel's frames can be as large as router.max_payload_bytes (4 MiB by
//   default) plus 64 KiB, and grpc-js refuses anything over 4 MiB by default;
// - grpc-js backs off reconnecting a lost connection up to 120 s by default,
//   and a call made meanwhile fails at once with UNAVAILABLE: keep the
//   channel's own backoff close to ours so a restarted node is found soon.
const CHANNEL_OPTIONS = {
  'grpc.max_receive_message_length': 64 * 1024 * 1024,
  'grpc.max_send_message_length': 64 * 1024 * 1024,
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 5000,
};

function kernelClient(target = kernelTarget()) {
  return new kernelV1.Kernel(target, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
}

// The kernel.v1.Failure type, and a google.rpc.Status (with its
// google.protobuf.Any) described by hand: no copy of google/rpc/status.proto
// ships with these packages. protobufjs is what @grpc/proto-loader itself
// parses protos with; resolve it through proto-loader so that its own copy
// is used wherever npm placed it.
const protobuf = require(require.resolve('protobufjs', {
  paths: [path.dirname(require.resolve('@grpc/proto-loader'))],
}));
const FailureType = protobuf.loadSync(PROTO).lookupType('kernel.v1.Failure');
const StatusType = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
              },
            },
          },
        },
        protobuf: {
          nested: {
            Any: {
              fields: {
                type_url: { type: 'string', id: 1 },
                value: { type: 'bytes', id: 2 },
              },
            },
          },
        },
      },
    },
  },
}).lookupType('google.rpc.Status');

const FAILURE_TYPE_URL = 'type.googleapis.com/kernel.v1.Failure';

// The kernel's Failure ({code, message, causality: [{context, service,
// plugin}]}) from the error of a failed unary call: the
// `grpc-status-details-bin` trailer is a google.rpc.Status whose details
// hold the Failure packed in an Any. An error that did not come from the
// kernel (no connection, a deadline grpc-js enforced itself) has no
// Failure: one is made from the status code and message, without a chain.
function failureOf(err) {
  const raw = err && err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  for (const value of raw) {
    try {
      const status = StatusType.decode(Buffer.from(value));
      for (const any of status.details) {
        if (any.type_url === FAILURE_TYPE_URL) {
          const f = FailureType.toObject(FailureType.decode(any.value), { defaults: true });
          return { code: f.code, message: f.message, causality: f.causality };
        }
      }
    } catch (_) {
      // Not a google.rpc.Status: fall through to the plain status.
    }
  }
  return { code: err.code, message: err.details || err.message || '', causality: [] };
}

// `NOT_FOUND` for 5, and so on (grpc.status is a numeric enum).
function codeName(code) {
  return grpc.status[code] || `CODE_${code}`;
}

// gRPC status code numbers, as used in Failure.code.
const Code = grpc.status;

module.exports = { grpc, kernelV1, kernelClient, kernelTarget, failureOf, codeName, Code, PROTO };
