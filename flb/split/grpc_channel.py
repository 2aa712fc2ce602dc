"""The network transport of split learning: flb.split.cut frames over gRPC, one unary call per frame.

Why gRPC and not torch.distributed.rpc with distributed autograd: torch's RPC pickles every argument and result
(a peer could make the other run any code: the project never unpickles what it receives), it needs one process
group whose size is fixed when it starts (a client that crashes or joins late breaks the whole group) and it offers
no TLS. gRPC (already installed with Flower) carries bytes, so what crosses is exactly the safetensors frames the
in-process channel hands over, and a client may come and go. The gradients are passed explicitly (the cut's
gradient in each `backward` frame), so no distributed autograd is needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flb.errors import FLBError

SERVICE = "flb.Split"
METHOD = "Frame"
MAX_MESSAGE_BYTES = 1 << 30  # hidden states of a long batch are far above gRPC's default 4 MB
OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]


def serve(handle: Callable[[bytes], bytes], address: str, threads: int = 8):
    """A started gRPC server answering every frame with `handle(frame)`; and the port it listens on (address
    host:0 picks a free one)."""
    from concurrent import futures

    import grpc

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(lambda request, context: handle(request))}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(address)
    if port == 0:
        raise FLBError(f"split.address {address}: cannot listen there (in use, or not this machine's address)")
    server.start()
    return server, port


class GrpcSend:
    """A client's transport: send(frame) -> the server's reply frame. Until the server answers once, a call that
    finds no server is retried for `wait_s` (the server may start after its clients)."""

    def __init__(self, address: str, wait_s: float):
        import grpc

        self.channel = grpc.insecure_channel(address, options=OPTIONS)
        self.call = self.channel.unary_unary(f"/{SERVICE}/{METHOD}")
        self.address, self.wait_s, self.connected = address, wait_s, False

    def __call__(self, frame: bytes) -> bytes:
        import grpc

        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                reply = self.call(
                    frame, wait_for_ready=not self.connected, timeout=max(1.0, deadline - time.monotonic())
                )
                self.connected = True
                return reply
            except grpc.RpcError as exc:
                if self.connected or time.monotonic() >= deadline:
                    raise FLBError(f"split server at {self.address}: {exc.code().name} ({exc.details()})") from None

    def close(self) -> None:
        self.channel.close()
