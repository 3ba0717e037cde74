"""Context header names (PROTOCOL §3) and the small parsers around them."""

from __future__ import annotations

from collections.abc import Mapping

#: The context path of a call (`<root>.<n>…`); sent up, it names the parent.
CONTEXT = "x-kernel-context"
#: What the tree may still spend: `calls=…,depth=…,events=…[,name=…]`.
BUDGET = "x-kernel-budget"
#: The identity a connection claims (metadata only).
PLUGIN = "x-kernel-plugin"
#: The calling plugin, set by the kernel.
CALLER = "x-kernel-caller"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
BAGGAGE = "baggage"

#: Headers a handler passes on to its nested calls and emits, besides its
#: own path as `x-kernel-context`. Forwarding the budget lowers nothing.
FORWARDED = (TRACEPARENT, TRACESTATE, BAGGAGE, BUDGET)

#: Headers the kernel reads as a caller's or publisher's context.
CONTEXT_HEADERS = frozenset((CONTEXT, *FORWARDED))


def parse_budget(value: str | None) -> dict[str, int]:
    """`calls=10,depth=3,sql=5` as a dict; malformed entries are skipped,
    as the kernel skips them."""
    out: dict[str, int] = {}
    if not value:
        return out
    for entry in value.split(","):
        name, sep, amount = entry.strip().partition("=")
        if sep and name and amount.isdigit():
            out[name] = int(amount)
    return out


def trace_id(traceparent: str | None) -> str | None:
    """The 32-hex trace id of a W3C `traceparent` (`00-<trace>-<span>-<flags>`)."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    if len(parts) >= 4 and len(parts[1]) == 32:
        return parts[1]
    return None


def forwarded(headers: Mapping[str, str], path: str) -> dict[str, str]:
    """The headers a nested call or emit carries from a handler's context."""
    out = {k: headers[k] for k in FORWARDED if k in headers}
    if path:
        out[CONTEXT] = path
    return out
