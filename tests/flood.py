"""Connections that never ask for an association, and a legitimate sender probing meanwhile.

For the listener's reliability tests and ``benchmarks/idle_flood.py``::

    with IdleConnections(port, 60) as flood, EchoProbe(echo) as probe:
        time.sleep(5)
    assert probe.failed == [] and flood.reopened > 0
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

# The first bytes of a TLS ClientHello (record header, then the start of the handshake
# message): a server waits for the rest, which never comes.
STALLED_CLIENT_HELLO = bytes.fromhex("1603010200010001fc0303")


class IdleConnections:
    """``count`` TCP connections to ``host:port`` that send ``first_bytes`` (or nothing) and then wait.

    Each is re-opened as soon as the node closes it, so the node always has
    ``count`` of them, however quickly it closes them.
    """

    def __init__(
        self,
        port: int,
        count: int,
        *,
        first_bytes: bytes = b"",
        host: str = "127.0.0.1",
        source: str = "127.0.0.2",
    ) -> None:
        self.address = (host, port)
        self.source = (source, 0)  # another loopback address: the flood comes from another "host"
        self.count = count
        self.first_bytes = first_bytes
        self.opened = 0
        self.reopened = 0
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idle-connections", daemon=True)

    def __enter__(self) -> IdleConnections:
        for _ in range(self.count):
            self._open()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def _open(self) -> None:
        while not self._stop.is_set():
            try:
                sock = socket.create_connection(self.address, timeout=2, source_address=self.source)
                break
            except OSError:  # backlog full for a moment: try again
                time.sleep(0.01)
        else:
            return
        if self.first_bytes:
            sock.sendall(self.first_bytes)
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ)
        self.opened += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    if sock.recv(4096):
                        continue  # an A-ABORT or alert on its way to EOF
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                self._selector.unregister(sock)
                sock.close()
                self.reopened += 1
                self._open()


class EchoProbe:
    """A legitimate sender trying ``echo()`` every ``interval`` seconds on its own thread.

    ``echo`` returns whether the C-ECHO succeeded on a fresh association.
    """

    def __init__(self, echo: Callable[[], bool], interval: float = 0.2) -> None:
        self._echo = echo
        self._interval = interval
        self.results: list[tuple[float, bool, float]] = []  # (when, succeeded, seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="echo-probe", daemon=True)

    def __enter__(self) -> EchoProbe:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: TracebackType | BaseException | None) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                succeeded = self._echo()
            except Exception:  # a refused or broken association is a failed attempt, not a test crash
                succeeded = False
            self.results.append((started, succeeded, time.monotonic() - started))
            self._stop.wait(max(0.0, self._interval - (time.monotonic() - started)))

    @property
    def tried(self) -> int:
        return len(self.results)

    @property
    def succeeded(self) -> int:
        return sum(1 for _, ok, _ in self.results if ok)
