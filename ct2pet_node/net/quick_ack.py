"""An association socket that acknowledges what it reads at once, for peers that answer in pieces.

dcmtk (and so Orthanc, storescp) writes each response PDU in two ``write``
calls: 12 bytes of PDU and PDV headers, then the command set. Unless the
peer sets ``TCP_NODELAY`` (dcmtk reads it from its environment, which a
stock install leaves unset), Nagle holds the second write until the first
is acknowledged; Linux delays that ACK by 40 ms when the connection looks
interactive, which a request/response protocol always does. Each C-STORE
then costs ~45 ms whatever its size: 247 instances took 12 s instead of 1.3.

``TCP_QUICKACK`` makes our side acknowledge at once, but Linux resets it
whenever it decides the connection is interactive again, so it is set
after every read: a read that drains the receive queue with the option set
sends the pending ACK there and then, and the peer's second write leaves.
No-op where the option does not exist (it is Linux only).
"""

from __future__ import annotations

import socket

from pynetdicom.transport import AssociationSocket

# Not in the socket module on every platform; the value is Linux's (netinet/tcp.h).
TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
_READ_CHUNK_BYTES = 65536


def set_quick_ack(sock: socket.socket) -> None:
    """Ask the kernel to acknowledge received data now rather than up to 40 ms later."""
    if TCP_QUICKACK is not None:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)


class QuickAckSocket(AssociationSocket):
    """pynetdicom's association socket, re-arming ``TCP_QUICKACK`` after every read."""

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` (fewer only when the peer closed); blocks up to the network timeout.

        Same contract as :meth:`AssociationSocket.recv`, whose loop calls the
        raw socket directly and so cannot be hooked.
        """
        assert self.socket is not None, "recv on a socket that was closed"
        received = bytearray()
        while len(received) < nr_bytes:
            chunk = self.socket.recv(min(nr_bytes - len(received), _READ_CHUNK_BYTES))
            if not chunk:
                break
            received += chunk
            set_quick_ack(self.socket)
        return received
