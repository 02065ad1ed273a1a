"""The bytes of a KServe v2 infer request and reply: HTTP compression, the binary tensor data
extension (a JSON header of ``Inference-Header-Content-Length`` bytes, then each binary tensor's
``binary_data_size`` bytes in order) and the BYTES element encoding (a 4-byte little-endian
length before each element), and the check that every parameter a request sends is one the
server honours.

Every length here comes from the client, so each is checked against the bytes actually received
before anything is sliced or allocated: a lie is a 400 saying which number disagrees with what.
"""

from __future__ import annotations

import json
import struct
import zlib

from fastapi import HTTPException
from fastapi.responses import Response

HEADER_LENGTH = "Inference-Header-Content-Length"
_ZLIB_WINDOWS = {"gzip": 31, "deflate": 15}  # HTTP's "deflate" is the zlib format


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before the client's ``Content-Encoding`` (tritonclient's
    ``request_compression_algorithm``), inflated to at most ``limit`` bytes: a small gzip bomb
    costs no more memory than a plain body at the limit."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in _ZLIB_WINDOWS:
        raise HTTPException(415, f"Content-Encoding {encoding!r}: send the body as gzip, deflate or uncompressed")
    inflater = zlib.decompressobj(_ZLIB_WINDOWS[encoding])
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise HTTPException(400, f"the body is not valid {encoding} data ({exc})") from None
    if len(data) > limit:
        raise HTTPException(
            413, f"the {encoding} body inflates to over the limit of {limit:,} bytes (serve.max_body_mb)"
        )
    if not inflater.eof:
        raise HTTPException(400, f"the {encoding} body ends before its compressed stream does (truncated)")
    if inflater.unused_data:
        raise HTTPException(400, f"{len(inflater.unused_data)} bytes follow the end of the {encoding} stream")
    return data


def check_parameters(parameters: dict, known: dict[str, str | None], where: str) -> None:
    """Refuse what this server cannot honour; ``known`` maps each name to None (honoured) or why not."""
    for key in parameters:
        if key.startswith("shared_memory_"):
            raise HTTPException(
                400, f"{where}: {key}: shared memory is not supported; tensors travel in the HTTP body (binary data)"
            )
        if key not in known:
            honoured = ", ".join(name for name, why in known.items() if why is None)
            raise HTTPException(400, f"{where}: unknown parameter {key!r}; this server reads {honoured}")
        if known[key] is not None:
            raise HTTPException(400, f"{where}: parameter {key!r} is not supported: {known[key]}")


def flag(parameters: dict, key: str, where: str, default: bool = False) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise HTTPException(400, f"{where}: parameter {key!r} must be true or false, not {value!r}")
    return value


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary part after it, as ``Inference-Header-Content-Length`` says."""
    if header_length is None:
        return body, b""
    text = header_length.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise HTTPException(
            400, f"{HEADER_LENGTH}: {header_length[:40]!r} is not a byte count; send the JSON header's length in bytes"
        )
    size = int(text)
    if not 0 < size <= len(body):
        raise HTTPException(
            400, f"{HEADER_LENGTH} is {size:,} but the body holds {len(body):,} bytes; it must be 1 to the body's size"
        )
    return body[:size], body[size:]


def binary_slices(tensors: list, binary: bytes) -> list[bytes | None]:
    """Each input's bytes from the binary part (None for an input whose data is in the JSON), in
    the order the inputs are listed; every byte of the binary part must belong to one of them."""
    slices: list[bytes | None] = []
    offset = 0
    for tensor in tensors:
        parameters = tensor.parameters or {}
        if "binary_data_size" not in parameters:
            if tensor.data is None:
                raise HTTPException(
                    400, f"input {tensor.name!r} has neither 'data' nor a 'binary_data_size' parameter; send one"
                )
            slices.append(None)
            continue
        size = parameters["binary_data_size"]
        if tensor.data is not None:
            raise HTTPException(400, f"input {tensor.name!r} has both 'data' and 'binary_data_size'; send one")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise HTTPException(400, f"input {tensor.name!r}: binary_data_size must be a byte count, not {size!r}")
        if offset + size > len(binary):
            raise HTTPException(
                400,
                f"input {tensor.name!r}: binary_data_size {size:,} at byte {offset:,} of the binary part, which holds "
                f"{len(binary):,} bytes after the {HEADER_LENGTH} header's JSON; the sizes must match the body",
            )
        slices.append(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise HTTPException(
            400,
            f"{len(binary) - offset:,} bytes after the JSON header belong to no input (the binary_data_size "
            f"parameters add up to {offset:,}); check {HEADER_LENGTH} and the sizes",
        )
    return slices


def unpack_bytes(raw: bytes, count: int, what: str) -> list[bytes]:
    """A binary BYTES tensor of ``count`` elements: each a 4-byte little-endian length, then that
    many bytes. ``count`` comes from the (already bounded) shape, so the loop is bounded too."""
    items = []
    offset = 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise HTTPException(
                400, f"{what}: element {i} of {count} has no 4-byte length (the data ends at byte {len(raw):,})"
            )
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if size > len(raw) - offset:
            raise HTTPException(
                400,
                f"{what}: element {i} says {size:,} bytes at byte {offset:,}, past the end of its "
                f"{len(raw):,} bytes of data",
            )
        items.append(raw[offset : offset + size])
        offset += size
    if offset != len(raw):
        raise HTTPException(400, f"{what}: {len(raw) - offset:,} bytes left after the {count} elements its shape holds")
    return items


def pack_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def reply(header: dict, binary: list[bytes]) -> Response:
    """The JSON header alone, or followed by the binary outputs with the header's length."""
    text = json.dumps(header, separators=(",", ":")).encode()
    if not binary:
        return Response(text, media_type="application/json")
    return Response(
        text + b"".join(binary), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(text))}
    )
