"""Several API processes under uvicorn's supervisor (``hostcp serve --workers N``).

``uvicorn.run(..., workers=N)`` binds the listening socket with proto 0; the accepted
connections inherit that, and asyncio sets TCP_NODELAY only on IPPROTO_TCP sockets, so Nagle's
algorithm stayed on and every response on a keep-alive connection waited ~40 ms for the
client's delayed ACK (Kludex/uvicorn#3149; measured here: 0.8 ms -> 44 ms per sequential
request). ``run_processes`` does what ``uvicorn.run`` does for N > 1 with the socket's proto
set. The config class lives at module level: uvicorn pickles it into each spawned process.
"""

from __future__ import annotations

import inspect
import socket

import uvicorn
from uvicorn.supervisors import Multiprocess

APP = "app.main:create_app"


class TcpConfig(uvicorn.Config):
    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
            sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP,
                                 fileno=sock.detach())
        return sock


def run_processes(workers: int, host: str, port: int) -> None:
    """Serve the app from ``workers`` processes until interrupted."""
    config = TcpConfig(APP, factory=True, host=host, port=port, workers=workers)
    extra = {}
    if "target" in inspect.signature(Multiprocess).parameters:  # older uvicorn
        extra["target"] = uvicorn.Server(config).run
    try:
        Multiprocess(config, sockets=[config.bind_socket()], **extra).run()
    except KeyboardInterrupt:
        pass
