"""The SDK's one error type, [`KernelError`]: a gRPC code, a message and the
causality chain the kernel built (PROTOCOL §8).

A handler raises `KernelError` to fail its call with a code; an error from a
nested call, raised on unchanged, keeps its chain, so the kernel extends it
hop by hop. On unary RPCs the kernel packs its `Failure` into the
`grpc-status-details-bin` trailer (a `google.rpc.Status`); that is decoded
here, so a caller sees the provider's own message, without the
` (origin: …)` suffix the kernel adds to the status message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
import grpc.aio
from google.rpc import status_pb2

from ._proto import pb

__all__ = ["Hop", "KernelError", "code_of", "code_name"]

_FAILURE_TYPE = "kernel.v1.Failure"
_DETAILS_KEY = "grpc-status-details-bin"
_ORIGIN = re.compile(r" \(origin: [^()]*\)$")
_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def code_of(number: int) -> grpc.StatusCode:
    """The `grpc.StatusCode` of a wire code number (unknown numbers: UNKNOWN)."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def code_name(code: grpc.StatusCode) -> str:
    """The upper-case gRPC name, e.g. `NOT_FOUND`."""
    return code.name


@dataclass(frozen=True)
class Hop:
    """One hop of a causality chain."""

    #: The context path of the call at this hop (empty when the call was
    #: refused before its context node existed).
    context: str
    #: The service called at this hop.
    service: str
    #: The plugin that provided it (empty when no provider was reached).
    plugin: str

    def __str__(self) -> str:
        who = f" ({self.plugin})" if self.plugin else ""
        return f"{self.service}{who} @ {self.context or '-'}"


class KernelError(Exception):
    """A failed call, publish, charge or session: a gRPC code, a message, and
    the hops the failure crossed, where it started first."""

    code: grpc.StatusCode
    message: str
    causality: list[Hop]

    def __init__(
        self, code: grpc.StatusCode, message: str, causality: Sequence[Hop] = ()
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.causality = list(causality)

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.causality:
            text += " [causality: " + " <- ".join(str(h) for h in self.causality) + "]"
        return text

    def __repr__(self) -> str:
        return f"KernelError({self.code.name}, {self.message!r}, causality={self.causality!r})"

    @property
    def chain(self) -> list[str]:
        """The services of the causality chain, innermost first."""
        return [h.service for h in self.causality]

    @classmethod
    def from_failure(cls, failure: pb.Failure) -> KernelError:
        """From the wire form."""
        hops = [Hop(h.context, h.service, h.plugin) for h in failure.causality]
        return cls(code_of(failure.code), failure.message, hops)

    def to_failure(self) -> pb.Failure:
        """The wire form, chain included, so the kernel can extend it."""
        return pb.Failure(
            code=self.code.value[0],
            message=self.message,
            causality=[
                pb.Hop(context=h.context, service=h.service, plugin=h.plugin)
                for h in self.causality
            ],
        )

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> KernelError:
        """From a failed unary RPC: the kernel's `Failure` out of the status
        details when there is one; else the status code and message (a
        transport failure, or a status tonic made itself)."""
        trailer: Iterable[Any]
        if isinstance(err, grpc.aio.AioRpcError):
            code, details, trailer = err.code(), err.details(), err.trailing_metadata()
        elif hasattr(err, "trailing_metadata"):  # sync grpc's errors are also a grpc.Call
            call = cast(grpc.Call, err)
            code, details, trailer = call.code(), call.details(), call.trailing_metadata()
        else:
            return cls(grpc.StatusCode.UNKNOWN, str(err))
        failure = _failure_in(trailer)
        if failure is not None:
            return cls.from_failure(failure)
        return cls(code, _ORIGIN.sub("", details or ""))


def _failure_in(trailer: Iterable[Any] | None) -> pb.Failure | None:
    for key, value in trailer or ():
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.type_url.endswith(_FAILURE_TYPE):
                return pb.Failure.FromString(detail.value)
    return None
