"""Writing one event to many sockets: the part every push edge (IRC, WebSocket)
shares.

Twisted's `transport.write` buffers the data, asks epoll for writability, and
sends it on the next reactor turn (then tells epoll to stop watching): two
`epoll_ctl` calls, a `doWrite` and its logging context per connection and event,
more than the `send()` itself.  While a transport has nothing buffered, writing
straight to its socket is the same thing in one system call; whatever the socket
does not take goes to the transport, which from then on deals with a full or
broken socket as usual (and keeps the order, since nothing is written through
while it holds data).
"""
from __future__ import annotations

from typing import Any

from twisted.internet import tcp


def direct_socket(transport) -> Any:
    """The socket of a plain TCP transport, to write through while its buffer is
    empty; None for anything else (TLS, test transports)."""
    if (isinstance(transport, tcp.Connection) and not transport.TLS
            and all(hasattr(transport, name) for name in
                    ("socket", "dataBuffer", "_tempDataLen", "disconnecting"))):
        return transport.socket
    return None


def send_through(sock, transport, data: bytes) -> bytes:
    """Send `data` on `sock` (from `direct_socket(transport)`) if the transport holds
    nothing; returns what is left for `transport.write` (b"" when all of it went)."""
    if transport.dataBuffer or transport._tempDataLen or transport.disconnecting \
            or transport.TLS:
        return data
    try:
        sent = sock.send(data)
    except OSError:         # would block, or broken: the transport finds out
        return data
    return data[sent:] if sent < len(data) else b""
