"""`hostcp serve --workers N` listens on a socket whose accepted connections get TCP_NODELAY
(app/serving.py). Without it Nagle's algorithm held every keep-alive response ~40 ms for the
client's delayed ACK (uvicorn's own multi-process path binds with proto 0)."""

from __future__ import annotations

import asyncio
import socket

import pytest

pytestmark = pytest.mark.timeout(30)


def _nodelay_of_accepted(listener: socket.socket) -> int:
    """TCP_NODELAY on a connection accepted by asyncio (as uvicorn's server accepts them)."""
    async def main() -> int:
        seen: asyncio.Future = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        port = listener.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(seen, 10)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def test_worker_socket_accepts_connections_with_nodelay():
    from app.serving import TcpConfig

    listener = TcpConfig("app.main:create_app", factory=True, host="127.0.0.1", port=0,
                         workers=2).bind_socket()
    assert listener.proto == socket.IPPROTO_TCP
    assert _nodelay_of_accepted(listener) != 0
