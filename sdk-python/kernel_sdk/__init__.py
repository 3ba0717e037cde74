"""The Python SDK for kernel plugins, on `grpc.aio`.

A plugin provides string-named services and calls others through the
kernel node; it never imports another plugin. Every call and event carries
a context (a place in the context tree, a trace, a deadline, a budget),
which nested calls and emits made from a handler inherit.

```python
from kernel_sdk import Client, Context, Plugin

plugin = Plugin("greeter")

@plugin.service("greet.hello")
async def hello(ctx: Context, args: dict) -> dict:
    return {"greeting": f"hello, {args['name']}"}

# in one process:  await plugin.serve("http://127.0.0.1:50051")
# in another:      await Client("http://127.0.0.1:50051").call_json("greet.hello", {"name": "ada"})
```

Layout (imports flow downwards only):
- `plugin`: `Plugin`, providing services: handlers, schemas, how an
  invocation runs, the reconnect loop.
- `_session`: one Register session: invocations, cancels, heartbeats, drain.
- `context`: `Context`, a handler's invocation: path, caller, baggage,
  trace, deadline, budget; nested calls, emits, charges.
- `client`: `Client`, calls (multiplexed CallStream or unary Call),
  publishes, subscriptions.
- `bulk`: `BulkPublisher`, many events confirmed in bulk (compact acks).
- `events`: `Event`, `Subscriber`, `Published`.
- `tracing`: optional OpenTelemetry `plugin.handle` spans.
- `errors`: `KernelError` and `Hop`, the one error type.
- `_mux`, `_proto`, `_headers`: the CallStream multiplexer, the generated
  messages with typed stubs, the context header names.
"""

from .bulk import BulkPublisher, Refused
from .client import Client, Reply
from .context import Context
from .errors import Hop, KernelError
from .events import DLQ_PREFIX, Event, Published, Subscriber
from .plugin import Plugin, SessionEnd

__all__ = [
    "BulkPublisher",
    "Client",
    "Context",
    "DLQ_PREFIX",
    "Event",
    "Hop",
    "KernelError",
    "Plugin",
    "Published",
    "Refused",
    "Reply",
    "SessionEnd",
    "Subscriber",
]

__version__ = "0.1.0"
