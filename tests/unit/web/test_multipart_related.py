"""The streaming multipart/related reader: parts whatever the chunking, bounded memory, bad bodies refused."""

from __future__ import annotations

import pytest

from ct2pet_node.web.multipart_related import (
    HEAD_BYTES,
    MultipartError,
    MultipartReader,
    Part,
    parse_content_type,
)

BOUNDARY = "b0undary-42"


def body(*contents: bytes, leading_crlf: bool = True, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    """A multipart/related body the way dicomweb-client writes one (CRLF before the first delimiter)."""
    parts = [f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + c for c in contents]
    start = preamble + (b"\r\n" if leading_crlf else b"")
    return start + b"\r\n".join(parts) + f"\r\n--{BOUNDARY}--".encode() + epilogue


def read_all(data: bytes, chunk: int, max_part_bytes: int = 10_000) -> list[Part]:
    reader = MultipartReader(BOUNDARY, max_part_bytes)
    parts: list[Part] = []
    for start in range(0, len(data), chunk):
        parts += reader.feed(data[start : start + chunk])
    reader.close()
    return parts


# Contents that look like a delimiter without being one: no CRLF before the dashes, or a prefix.
TRICKY = (b"DICM\r\n--b0undary-4", f"--{BOUNDARY}".encode() + b" inline", b"\r\n-", b"")


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 10_000])
def test_parts_come_out_whole_and_in_order_whatever_the_chunking(chunk: int) -> None:
    parts = read_all(body(*TRICKY, preamble=b"ignored preamble", epilogue=b"\r\nignored"), chunk)
    assert [part.content for part in parts] == list(TRICKY)
    assert [part.size for part in parts] == [len(content) for content in TRICKY]
    assert all(part.content_type == "application/dicom" for part in parts)


def test_a_body_starting_with_its_delimiter_reads_the_same() -> None:
    assert [p.content for p in read_all(body(b"one", b"two", leading_crlf=False), 3)] == [b"one", b"two"]


def test_an_oversized_part_keeps_its_head_and_size_and_the_next_part_is_whole() -> None:
    big = bytes(range(256)) * 400  # 102 400 bytes
    parts = read_all(body(big, b"small"), 4096, max_part_bytes=50_000)
    assert parts[0].content is None and parts[0].size == len(big)
    assert parts[0].head == big[:HEAD_BYTES]
    assert parts[1].content == b"small"


def test_headers_are_read_with_lower_cased_names() -> None:
    data = (
        f"--{BOUNDARY}  \r\nContent-Type: Application/DICOM; transfer-syntax=1.2.840.10008.1.2.1\r\n"
        f"X-Other:  value \r\n\r\nabc\r\n--{BOUNDARY}--"
    ).encode()
    (part,) = read_all(data, 5)
    assert part.content_type == "application/dicom"
    assert part.headers["x-other"] == "value" and part.content == b"abc"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (body(b"one")[:-2], "ended before its closing boundary"),
        (b"no delimiter at all", "ended before its closing boundary"),
        (f"--{BOUNDARY}\r\nnot a header\r\n\r\nx\r\n--{BOUNDARY}--".encode(), "not 'Name: value'"),
        (f"--{BOUNDARY}junk\r\n\r\nx\r\n--{BOUNDARY}--".encode(), "followed by text"),
        (f"--{BOUNDARY}\r\nA: ".encode() + b"x" * 20_000, "headers of a part exceed"),
    ],
)
def test_a_malformed_body_is_refused_saying_why(data: bytes, message: str) -> None:
    with pytest.raises(MultipartError, match=message):
        read_all(data, 1000)


def test_a_missing_or_absurd_boundary_is_refused() -> None:
    with pytest.raises(MultipartError, match="boundary"):
        MultipartReader("", 10)
    with pytest.raises(MultipartError, match="boundary"):
        MultipartReader("x" * 71, 10)


def test_content_type_parameters_are_parsed_as_mime_says() -> None:
    media, params = parse_content_type('Multipart/Related; type="application/dicom"; boundary="a;b=c"')
    assert media == "multipart/related"
    assert params == {"type": "application/dicom", "boundary": "a;b=c"}
    assert parse_content_type("")[0] == "text/plain"  # RFC 2045's default: not multipart
