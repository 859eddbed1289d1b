"""Crafted files for parser and upload tests: .docx packages written by hand, so a part may
unpack to gigabytes, declare a size it does not have, or hold any bytes at all."""

from __future__ import annotations

import functools
import io
import struct
import zipfile
import zlib

W_NS = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
MiB = 1024 * 1024


@functools.cache
def _template_parts() -> dict[str, bytes]:
    """The parts of a one-paragraph .docx saved by python-docx (read only: callers copy)."""
    import docx

    word = docx.Document()
    word.add_paragraph("Hello there.")
    buffer = io.BytesIO()
    word.save(buffer)
    with zipfile.ZipFile(buffer) as package:
        return {info.filename: package.read(info) for info in package.infolist()}


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def _zip(members: list[tuple[str, bytes, int, int]]) -> bytes:
    """A zip written by hand from (name, raw deflate stream, CRC-32, size the directory
    declares), so a member may be gigabytes unpacked or lie about its size."""
    out, directory = io.BytesIO(), []
    for name, raw, crc, size in members:
        offset, encoded = out.tell(), name.encode()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(raw),
                              size, len(encoded), 0) + encoded + raw)
        directory.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21,
                                     crc, len(raw), size, len(encoded), 0, 0, 0, 0, 0, offset)
                         + encoded)
    start, listing = out.tell(), b"".join(directory)
    out.write(listing + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(directory),
                                    len(directory), len(listing), start, 0))
    return out.getvalue()


def crafted_docx(document: bytes | tuple[bytes, int, int] | None = None,
                 extra: dict[str, bytes] | None = None) -> bytes:
    """The template .docx with ``word/document.xml`` replaced by ``document`` (bytes, or a
    raw deflate stream with the CRC-32 and size to declare) and ``extra`` parts added."""
    members = []
    for name, data in (_template_parts() | (extra or {})).items():
        if name == "word/document.xml" and isinstance(document, tuple):
            members.append((name, *document))
            continue
        content = document if name == "word/document.xml" and document is not None else data
        members.append((name, _deflate(content), zlib.crc32(content), len(content)))
    return _zip(members)


def spaces(mib: int) -> tuple[bytes, int, int]:
    """``mib`` MiB of spaces as a deflate stream of about 1 KiB a MiB, with its CRC-32 and
    size: one full-flushed block repeated (each block stands alone), then an empty last one."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(b" " * MiB) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(b" " * MiB, crc)
    return block * mib + b"\x03\x00", crc, mib * MiB


def body(paragraphs: str) -> bytes:
    return f"<w:document {W_NS}><w:body>{paragraphs}</w:body></w:document>".encode()
