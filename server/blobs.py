"""HTTP for stored blobs: streaming an upload into the store, and serving a blob for download.

Downloads answer GET and HEAD with a strong ETag (`"<sha256>"`: the bytes never change under
a name that is their digest), Last-Modified, Content-Length, `Accept-Ranges: bytes` and
`Content-Disposition: attachment`. Conditions are evaluated in RFC 9110's order (§13.2.2):
If-Match (412 on mismatch), else If-Unmodified-Since; If-None-Match (304 on match), else
If-Modified-Since; then Range, honoured only while If-Range (an entity tag compared strongly,
or a date equal to Last-Modified) still holds.

Range: one range (`a-b`, `a-`, `-n`) answers 206 with Content-Range; ranges none of which is
satisfiable answer 416 with `Content-Range: bytes */length`; several satisfiable ranges answer
200 with the whole file (allowed by RFC 9110 §14.2), or, where the caller asks for it (DDI
artifacts: hawkBit clients may send them), 206 `multipart/byteranges` with one part per range
in the order asked; a Range header that does not parse, or names another unit, is ignored.
HEAD answers exactly the status and headers GET would (Range included), without the body.

The decision (`decide`) is a pure function of the request headers and what is being served,
so it is tested on its own; `serve` turns it into a response that streams the file in blocks.
"""

from __future__ import annotations

import email.utils
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from server.errors import ApiError
from server.store import BlobStore, BlobTooLargeError, BlobWriter

SEND_BLOCK = 1024 * 1024
RECEIVE_BATCH = 1024 * 1024  # received bytes handed to a worker thread at a time
MAX_RANGES = 64
_ENTITY_TAG = re.compile(r'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')
_RANGE_SPEC = re.compile(r"^(\d{1,19})?-(\d{1,19})?$")
_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True)
class Representation:
    """What is being served: the headers that describe it."""

    size: int
    sha256: str
    modified_seconds: int  # Last-Modified, whole seconds since the epoch
    filename: str
    media_type: str = "application/octet-stream"
    entity_tag: str = ""  # the opaque tag without quotes; default: the sha256

    @property
    def etag(self) -> str:
        return f'"{self.entity_tag or self.sha256}"'

    @property
    def last_modified(self) -> str:
        return email.utils.formatdate(self.modified_seconds, usegmt=True)


@dataclass(frozen=True)
class ByteRange:
    first: int
    last: int  # inclusive

    @property
    def length(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class Decision:
    status: int
    headers: Mapping[str, str]
    content: ByteRange | None  # the bytes a GET sends; None: no body
    parts: tuple[tuple[bytes, ByteRange], ...] = ()  # multipart: (part header, range) each
    closing: bytes = b""  # multipart: the closing delimiter


def _entity_tags(value: str) -> list[tuple[bool, str]] | None:
    """(weak, opaque tag) of each entity tag in a list; None if it does not parse."""
    tags: list[tuple[bool, str]] = []
    position = 0
    while position < len(value):
        match = _ENTITY_TAG.match(value, position)
        if match is None or match.end() == position:
            return None
        tags.append((match.group(1) is not None, match.group(2)))
        position = match.end()
    return tags


def _matches(value: str, etag: str, *, strong: bool) -> bool:
    """Whether an If-Match/If-None-Match list names `etag` (`*` names anything)."""
    if value.strip() == "*":
        return True
    tags = _entity_tags(value) or []
    return any(tag == etag and not (strong and weak) for weak, tag in tags)


def _http_date(value: str) -> int | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None
    return int(parsed.timestamp())


def parse_range(value: str, size: int) -> list[ByteRange] | None:
    """The satisfiable ranges of a `Range` header (maybe none); None: ignore the header."""
    unit, separator, specs = value.partition("=")
    if not separator or unit.strip().lower() != "bytes":
        return None
    parts = [part.strip() for part in specs.split(",") if part.strip()]
    if not parts or len(parts) > MAX_RANGES:
        return None
    satisfiable: list[ByteRange] = []
    for part in parts:
        match = _RANGE_SPEC.match(part)
        if match is None or (match.group(1) is None and match.group(2) is None):
            return None
        first_text, last_text = match.groups()
        if first_text is None:  # -n: the last n bytes
            suffix = int(last_text)
            if suffix > 0 and size > 0:
                satisfiable.append(ByteRange(max(0, size - suffix), size - 1))
            continue
        first = int(first_text)
        if last_text is not None and int(last_text) < first:
            return None  # invalid, not merely unsatisfiable
        if first < size:
            last = size - 1 if last_text is None else min(int(last_text), size - 1)
            satisfiable.append(ByteRange(first, last))
    return satisfiable


def _if_range_holds(value: str, served: Representation) -> bool:
    value = value.strip()
    if value.startswith(('"', "W/")):
        return value == served.etag  # a weak tag never matches here
    return _http_date(value) == served.modified_seconds


def _precondition(headers: Mapping[str, str], served: Representation, *,
                  common: dict[str, str]) -> Decision | None:
    """412 or 304 when a condition says so (RFC 9110 §13.2.2 steps 1-4), else None."""
    if_match = headers.get("if-match")
    if if_match is not None:
        if not _matches(if_match, served.etag, strong=True):
            return Decision(412, common, None)
    elif (since := _http_date(headers.get("if-unmodified-since", ""))) is not None \
            and served.modified_seconds > since:
        return Decision(412, common, None)
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if _matches(if_none_match, served.etag, strong=False):
            return Decision(304, common, None)
    elif (since := _http_date(headers.get("if-modified-since", ""))) is not None \
            and served.modified_seconds <= since:
        return Decision(304, common, None)
    return None


def _multipart(served: Representation, ranges: list[ByteRange], *,
               common: dict[str, str]) -> Decision:
    boundary = secrets.token_hex(16)
    parts = tuple(((f"\r\n--{boundary}\r\nContent-Type: {served.media_type}\r\n"
                    f"Content-Range: bytes {part.first}-{part.last}/{served.size}\r\n\r\n"
                    ).encode(), part) for part in ranges)
    closing = f"\r\n--{boundary}--\r\n".encode()
    length = sum(len(head) + part.length for head, part in parts) + len(closing)
    return Decision(206, {**common, "Content-Length": str(length),
                          "Content-Type": f"multipart/byteranges; boundary={boundary}"},
                    None, parts, closing)


def decide(headers: Mapping[str, str], served: Representation, *,
           multipart: bool = False) -> Decision:
    """What to answer a GET (or HEAD) for `served` given these request headers
    (keys in lower case, as Starlette's Headers give them)."""
    common = {"ETag": served.etag, "Last-Modified": served.last_modified,
              "Accept-Ranges": "bytes"}
    refused = _precondition(headers, served, common=common)
    if refused is not None:
        return refused
    whole = {**common, "Content-Type": served.media_type,
             "Content-Disposition": f'attachment; filename="{safe_filename(served.filename)}"'}
    requested = headers.get("range")
    ranges = None
    if requested is not None and _if_range_holds(headers.get("if-range", served.etag), served):
        ranges = parse_range(requested, served.size)
    if multipart and ranges is not None and len(ranges) > 1:
        return _multipart(served, ranges, common=common)
    if ranges is None or len(ranges) > 1:
        everything = ByteRange(0, served.size - 1) if served.size else None
        return Decision(200, {**whole, "Content-Length": str(served.size)}, everything)
    if not ranges:
        return Decision(416, {**common, "Content-Range": f"bytes */{served.size}"}, None)
    (part,) = ranges
    return Decision(206, {**whole, "Content-Length": str(part.length),
                          "Content-Range": f"bytes {part.first}-{part.last}/{served.size}"},
                    part)


def safe_filename(name: str) -> str:
    return _FILENAME_UNSAFE.sub("_", name) or "download"


def _send(handle: BinaryIO, part: ByteRange) -> Iterator[bytes]:
    """The bytes of `part`, block by block. `handle` is a file object, so it is closed even
    when the response never starts (the generator is dropped, and the file with it)."""
    with handle:
        position, left = part.first, part.length
        while left > 0:
            block = os.pread(handle.fileno(), min(SEND_BLOCK, left), position)
            if not block:
                return  # the file shrank: never for a blob named by its digest
            position += len(block)
            left -= len(block)
            yield block


def _send_parts(handle: BinaryIO, decision: Decision) -> Iterator[bytes]:
    with handle:
        for head, part in decision.parts:
            yield head
            yield from _send(os.fdopen(os.dup(handle.fileno()), "rb", buffering=0), part)
        yield decision.closing


def serve(request: Request, *, path: Path, served: Representation,
          multipart: bool = False) -> Response:
    """The response to a GET or HEAD of the blob at `path` (opened before answering, so a
    missing file is an error and not a truncated download)."""
    decision = decide(request.headers, served, multipart=multipart)
    headers = dict(decision.headers)
    if request.method == "HEAD" or (decision.content is None and not decision.parts):
        if decision.status == 416:
            return Response(f"no byte of the range is within the {served.size} bytes\n",
                            status_code=416, headers=headers, media_type="text/plain")
        return Response(b"", status_code=decision.status, headers=headers)
    try:
        handle = path.open("rb", buffering=0)
    except FileNotFoundError:
        raise ApiError(500, f"the stored blob {served.sha256} is missing from the store "
                            "(the store and the database disagree)") from None
    if decision.parts:
        return StreamingResponse(_send_parts(handle, decision), status_code=206,
                                 headers=headers)
    assert decision.content is not None
    return StreamingResponse(_send(handle, decision.content), status_code=decision.status,
                             headers=headers)


async def receive(request: Request, store: BlobStore, *, max_bytes: int) -> BlobWriter:
    """Stream the request body into a finished (not yet committed) upload in the store.

    413 past `max_bytes` (at once when Content-Length says so), 400 for an empty body. The
    caller owns the writer and must `close()` it; on any failure here (the client going away
    included) the partial upload is already removed.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"the upload ({declared} bytes) is larger than the server's limit "
                            f"of {max_bytes} bytes")
    writer = await run_in_threadpool(store.writer, max_bytes=max_bytes)
    try:
        batch: list[bytes] = []
        batched = 0
        async for chunk in request.stream():
            batch.append(chunk)
            batched += len(chunk)
            if batched >= RECEIVE_BATCH:
                await run_in_threadpool(writer.write, b"".join(batch))
                batch, batched = [], 0
        if batch:
            await run_in_threadpool(writer.write, b"".join(batch))
        await run_in_threadpool(writer.finish)
    except BlobTooLargeError as e:
        writer.close()
        raise ApiError(413, f"the upload is larger than the server's limit of {e.limit} "
                            "bytes") from None
    except ClientDisconnect:
        writer.close()  # an answer nobody reads, logged as one, not as a server error
        raise ApiError(400, f"the client went away after {writer.size} bytes of the "
                            "upload") from None
    except BaseException:
        writer.close()  # a disconnect, a cancellation, a full disk: leave nothing behind
        raise
    if writer.size == 0:
        writer.close()
        raise ApiError(400, "the request body is empty: send the file's bytes "
                            "(Content-Type: application/octet-stream)")
    return writer
