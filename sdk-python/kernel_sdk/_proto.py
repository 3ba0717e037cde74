"""The generated `kernel.v1` messages, typed stubs for the `Kernel` and
`Admin` services, and the channel settings the SDK uses.

Only the message modules are generated (gen_proto.py); the service stubs are
written here against the method paths of the proto, so the SDK does not
depend on the grpcio version that generated them, and mypy sees real types.
"""

from __future__ import annotations

import os

import grpc
import grpc.aio

from ._gen import admin_pb2 as admin_pb
from ._gen import kernel_pb2 as pb

__all__ = ["pb", "admin_pb", "KernelStub", "AdminStub", "open_channel", "target_of", "MAX_MESSAGE"]

#: The node's default message limit: `router.max_payload_bytes` (4 MiB) plus
#: 64 KiB of envelope (PROTOCOL §10). grpcio defaults to 4 MiB, too little.
MAX_MESSAGE = 4 * 1024 * 1024 + 64 * 1024

_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    # The node pings every 10 s; our pings find a dead node on idle sessions.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # grpc's own reconnect backoff (1 s growing to 120 s by default) would
    # hide a restarted node behind ours: 100 ms doubling to 5 s, as the SDK's.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    # Several channels to one node must not share a connection by accident.
    ("grpc.use_local_subchannel_pool", 1),
]


def target_of(url: str) -> str:
    """`http://127.0.0.1:50051`, `https://…` (or a bare `127.0.0.1:50051`) as a grpc target;
    `unix:///run/kernel.sock` (the node's `server.unix_socket`) is one already."""
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            url = url[len(scheme):]
    return url.rstrip("/")


def _read_env_file(var: str) -> bytes | None:
    path = os.environ.get(var, "")
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def tls_credentials() -> grpc.ChannelCredentials:
    """TLS for an `https://` node: the CA in `$KERNEL_TLS_CA` (else the
    system's roots) and, for mTLS, the client certificate and key in
    `$KERNEL_TLS_CERT` and `$KERNEL_TLS_KEY`."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read_env_file("KERNEL_TLS_CA"),
        private_key=_read_env_file("KERNEL_TLS_KEY"),
        certificate_chain=_read_env_file("KERNEL_TLS_CERT"),
    )


class _Bearer(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Puts `authorization: Bearer <token>` on every call (auth on, the node
    knows the plugin by its token; PROTOCOL §1)."""

    def __init__(self, token: str) -> None:
        self._value = f"Bearer {token}"

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(tuple(details.metadata) if details.metadata else ()))
        metadata.add("authorization", self._value)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials,
            details.wait_for_ready)

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), requests)

    async def intercept_stream_stream(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), requests)


def open_channel(url: str, token: str | None = None) -> grpc.aio.Channel:
    """A channel to the node at `url` with the SDK's settings (TLS for an
    `https://` URL, see `tls_credentials`), presenting `token` (else
    `$KERNEL_TOKEN`, when set) on every call."""
    token = token if token is not None else os.environ.get("KERNEL_TOKEN", "")
    interceptors = [_Bearer(token)] if token else None
    if url.startswith("https://"):
        return grpc.aio.secure_channel(target_of(url), tls_credentials(), options=_OPTIONS,
                                       interceptors=interceptors)  # type: ignore[arg-type]
    options: list[tuple[str, int | str]] = [*_OPTIONS]
    if url.startswith("unix:"):
        # grpc would send the socket's path as the HTTP/2 authority, which
        # is not a valid one: the node refuses such streams (PROTOCOL_ERROR).
        options.append(("grpc.default_authority", "localhost"))
    return grpc.aio.insecure_channel(target_of(url), options=options,
                                     interceptors=interceptors)  # type: ignore[arg-type]


class KernelStub:
    """`kernel.v1.Kernel`: one multi-callable per RPC."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        svc = "/kernel.v1.Kernel/"
        self.register: grpc.aio.StreamStreamMultiCallable[pb.ProviderUp, pb.ProviderDown] = (
            channel.stream_stream(
                svc + "Register", pb.ProviderUp.SerializeToString, pb.ProviderDown.FromString
            )
        )
        self.call: grpc.aio.UnaryUnaryMultiCallable[pb.CallRequest, pb.CallResponse] = (
            channel.unary_unary(
                svc + "Call", pb.CallRequest.SerializeToString, pb.CallResponse.FromString
            )
        )
        self.call_stream: grpc.aio.StreamStreamMultiCallable[
            pb.CallStreamUp, pb.CallStreamDown
        ] = channel.stream_stream(
            svc + "CallStream", pb.CallStreamUp.SerializeToString, pb.CallStreamDown.FromString
        )
        self.publish: grpc.aio.UnaryUnaryMultiCallable[
            pb.PublishRequest, pb.PublishResponse
        ] = channel.unary_unary(
            svc + "Publish", pb.PublishRequest.SerializeToString, pb.PublishResponse.FromString
        )
        self.publish_stream: grpc.aio.StreamStreamMultiCallable[
            pb.PublishStreamUp, pb.PublishStreamDown
        ] = channel.stream_stream(
            svc + "PublishStream",
            pb.PublishStreamUp.SerializeToString,
            pb.PublishStreamDown.FromString,
        )
        self.subscribe: grpc.aio.StreamStreamMultiCallable[
            pb.SubscribeUp, pb.SubscribeDown
        ] = channel.stream_stream(
            svc + "Subscribe", pb.SubscribeUp.SerializeToString, pb.SubscribeDown.FromString
        )
        self.charge: grpc.aio.UnaryUnaryMultiCallable[pb.ChargeRequest, pb.ChargeResponse] = (
            channel.unary_unary(
                svc + "Charge", pb.ChargeRequest.SerializeToString, pb.ChargeResponse.FromString
            )
        )


class AdminStub:
    """`kernel.v1.Admin`, the operator's view (used by tests and tools)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        svc = "/kernel.v1.Admin/"
        self.list_plugins: grpc.aio.UnaryUnaryMultiCallable[
            admin_pb.ListPluginsRequest, admin_pb.ListPluginsResponse
        ] = channel.unary_unary(
            svc + "ListPlugins",
            admin_pb.ListPluginsRequest.SerializeToString,
            admin_pb.ListPluginsResponse.FromString,
        )
        self.list_services: grpc.aio.UnaryUnaryMultiCallable[
            admin_pb.ListServicesRequest, admin_pb.ListServicesResponse
        ] = channel.unary_unary(
            svc + "ListServices",
            admin_pb.ListServicesRequest.SerializeToString,
            admin_pb.ListServicesResponse.FromString,
        )
        self.list_subscriptions: grpc.aio.UnaryUnaryMultiCallable[
            admin_pb.ListSubscriptionsRequest, admin_pb.ListSubscriptionsResponse
        ] = channel.unary_unary(
            svc + "ListSubscriptions",
            admin_pb.ListSubscriptionsRequest.SerializeToString,
            admin_pb.ListSubscriptionsResponse.FromString,
        )
        self.get_context: grpc.aio.UnaryUnaryMultiCallable[
            admin_pb.GetContextRequest, admin_pb.GetContextResponse
        ] = channel.unary_unary(
            svc + "GetContext",
            admin_pb.GetContextRequest.SerializeToString,
            admin_pb.GetContextResponse.FromString,
        )
        self.cancel_context: grpc.aio.UnaryUnaryMultiCallable[
            admin_pb.CancelContextRequest, admin_pb.CancelContextResponse
        ] = channel.unary_unary(
            svc + "CancelContext",
            admin_pb.CancelContextRequest.SerializeToString,
            admin_pb.CancelContextResponse.FromString,
        )
        self.stats: grpc.aio.UnaryUnaryMultiCallable[
            admin_pb.StatsRequest, admin_pb.StatsResponse
        ] = channel.unary_unary(
            svc + "Stats",
            admin_pb.StatsRequest.SerializeToString,
            admin_pb.StatsResponse.FromString,
        )
