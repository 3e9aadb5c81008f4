"""A streaming reader of ``multipart/related`` bodies (RFC 2387 over RFC 2046's multipart syntax).

STOW-RS sends a whole series in one request, and a series can be larger than
the memory a node should spend on it, so the body is read chunk by chunk and
each part comes out as soon as its closing delimiter has arrived: memory holds
one part at a time, never more than ``max_part_bytes`` of it. A part beyond
that keeps only its first :data:`HEAD_BYTES` (enough for its DICOM file meta,
so the refusal can name the instance) and its size. Deciding code: bytes in,
parts out, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message

# Bytes of an oversized part kept for naming it: the preamble, the file meta and more.
HEAD_BYTES = 65_536
# Headers of one part: a few lines; more is not a STOW-RS client.
MAX_HEADER_BYTES = 16_384


class MultipartError(ValueError):
    """The body is not the multipart message its Content-Type announced; the text says why."""


@dataclass(frozen=True, slots=True)
class Part:
    """One body part: its headers (names lower-cased), its content (None when oversized), its size."""

    headers: Mapping[str, str]
    content: bytes | None
    size: int
    head: bytes = field(default=b"", repr=False)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """(media type, parameters) of a Content-Type header, parameters' names lower-cased, quotes removed.

    The standard library's MIME header parser, so quoted values with ``;`` or
    ``=`` in them are read as RFC 2045 says.
    """
    message = Message()
    message["content-type"] = value
    params = message.get_params() or []
    media_type = message.get_content_type().lower()
    return media_type, {name.lower(): str(val) for name, val in params[1:]}


class MultipartReader:
    """Feed the body's chunks in order; each :meth:`feed` returns the parts it completed.

    Parameters
    ----------
    boundary : str
        The ``boundary`` parameter of the request's Content-Type.
    max_part_bytes : int
        Largest part kept whole, bytes.
    """

    def __init__(self, boundary: str, max_part_bytes: int) -> None:
        if not boundary or len(boundary) > 70:
            raise MultipartError("the multipart boundary is missing or longer than 70 characters")
        # The first delimiter may start the body without a CRLF before it: read as if one were there.
        self._buffer = bytearray(b"\r\n")
        self._delimiter = b"\r\n--" + boundary.encode("ascii", errors="strict")
        self._max_part_bytes = max_part_bytes
        self._state = "preamble"
        self._headers: dict[str, str] = {}
        self._content = bytearray()
        self._head = bytearray()
        self._size = 0
        self._kept = True

    @property
    def finished(self) -> bool:
        """True once the closing delimiter has been read."""
        return self._state == "epilogue"

    def feed(self, chunk: bytes) -> list[Part]:
        if self._state == "epilogue":
            return []  # RFC 2046: the epilogue is ignored
        self._buffer += chunk
        parts: list[Part] = []
        while self._step(parts):
            pass
        return parts

    def close(self) -> None:
        """The body ended; raise :class:`MultipartError` unless its closing delimiter was read."""
        if self._state != "epilogue":
            raise MultipartError("the multipart body ended before its closing boundary")

    def _step(self, parts: list[Part]) -> bool:
        """Advance through the buffer as far as it allows; True to be called again."""
        if self._state == "preamble":
            return self._skip_preamble()
        if self._state == "after_delimiter":
            return self._read_delimiter_end()
        if self._state == "headers":
            return self._read_headers()
        if self._state == "body":
            return self._read_body(parts)
        return False

    def _skip_preamble(self) -> bool:
        found = self._buffer.find(self._delimiter)
        if found < 0:
            # Keep a tail that may be the start of a delimiter; the rest is preamble, dropped.
            del self._buffer[: max(0, len(self._buffer) - len(self._delimiter))]
            return False
        del self._buffer[: found + len(self._delimiter)]
        self._state = "after_delimiter"
        return True

    def _read_delimiter_end(self) -> bool:
        if len(self._buffer) < 2:
            return False
        if self._buffer[:2] == b"--":
            self._state = "epilogue"
            self._buffer.clear()
            return False
        line_end = self._buffer.find(b"\r\n")
        if line_end < 0:
            if len(self._buffer) > 256:
                raise MultipartError("a multipart boundary line does not end")
            return False
        if self._buffer[:line_end].strip(b" \t"):  # transport padding only (RFC 2046 5.1.1)
            raise MultipartError("a multipart boundary is followed by text on its line")
        del self._buffer[: line_end + 2]
        self._state = "headers"
        return True

    def _read_headers(self) -> bool:
        if self._buffer.startswith(b"\r\n"):  # a part with no headers
            end, skip = 0, 2
        else:
            end, skip = self._buffer.find(b"\r\n\r\n"), 4
        if end < 0:
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise MultipartError(f"the headers of a part exceed {MAX_HEADER_BYTES} bytes")
            return False
        self._headers = _header_fields(bytes(self._buffer[:end]))
        del self._buffer[: end + skip]
        self._state = "body"
        return True

    def _read_body(self, parts: list[Part]) -> bool:
        found = self._buffer.find(self._delimiter)
        if found < 0:
            # All but a tail that may be the start of the delimiter belongs to the part.
            take = max(0, len(self._buffer) - len(self._delimiter) + 1)
            self._take(bytes(self._buffer[:take]))
            del self._buffer[:take]
            return False
        self._take(bytes(self._buffer[:found]))
        del self._buffer[: found + len(self._delimiter)]
        content = bytes(self._content) if self._kept else None
        parts.append(Part(self._headers, content, self._size, bytes(self._head)))
        self._headers, self._content, self._head = {}, bytearray(), bytearray()
        self._size, self._kept = 0, True
        self._state = "after_delimiter"
        return True

    def _take(self, data: bytes) -> None:
        if not data:
            return
        self._size += len(data)
        if len(self._head) < HEAD_BYTES:
            self._head += data[: HEAD_BYTES - len(self._head)]
        if not self._kept:
            return
        if self._size > self._max_part_bytes:
            self._kept = False
            self._content = bytearray()  # give the memory back now, not at the part's end
            return
        self._content += data


def _header_fields(block: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise MultipartError("a part header line is not 'Name: value'")
        fields[name.strip().lower()] = value.strip()
    return fields
