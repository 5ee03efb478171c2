"""`kiln image push FILE --server URL`: upload a signed image to a Kiln server.

The file is streamed (requests reads it block by block; it is never held in memory) as the
body of `POST /api/v1/images`, with the operator's API token (`--token`, else `KILN_TOKEN`).
The server verifies the signature and every frame before it stores anything. It refuses a
bad token, or a Content-Length over its limit, before it reads the body and closes the
connection; urllib3 then stops sending and reads that answer, so the refusal is shown as the
server worded it rather than as a broken pipe.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from kiln.errors import KilnError
from kiln.progress import Progress

TOKEN_ENVIRONMENT = "KILN_TOKEN"  # noqa: S105 (the name of a variable, not a secret)
UPLOAD_BLOCK = 1024 * 1024
CONNECT_TIMEOUT = 10.0
ANSWER_TIMEOUT = 3600.0  # the server verifies every frame before it answers


class PushError(KilnError):
    """The server refused the image, or could not be reached."""


@dataclass(frozen=True)
class PushTarget:
    server: str  # base URL, no trailing slash
    token: str
    verify: bool | str = True  # requests' `verify`: a CA bundle path, or the system's CAs

    @property
    def url(self) -> str:
        return f"{self.server}/api/v1/images"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}",
                "Content-Type": "application/octet-stream"}


@dataclass(frozen=True)
class PushResult:
    image: dict[str, Any]
    new: bool  # False: the server already had this image


class _UploadBody:
    """The file as a request body: read in blocks, counted for progress. `__len__` gives
    requests the Content-Length, so the server can refuse an oversized upload at once."""

    def __init__(self, path: Path, progress: Progress):
        self._handle = path.open("rb")
        self._size = os.fstat(self._handle.fileno()).st_size
        self._progress = progress

    def __len__(self) -> int:
        return self._size

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(UPLOAD_BLOCK if size < 0 else size)
        self._progress.advance(len(data))
        return data

    def __iter__(self) -> Iterator[bytes]:
        while block := self.read(UPLOAD_BLOCK):
            yield block

    def close(self) -> None:
        self._handle.close()


def describe_refusal(response: requests.Response) -> str:
    """The server's answer as one message: status, `detail` and every `problem`."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        text = f"HTTP {response.status_code}: {body['detail']}"
        problems = body.get("problems") or []
        if isinstance(problems, list):
            text += "".join(f"\n  - {problem}" for problem in problems)
        return text
    snippet = response.text.strip()[:500]
    return f"HTTP {response.status_code} {response.reason}" + (f": {snippet}" if snippet else "")


def _post(session: requests.Session, target: PushTarget, *, body: Any) -> requests.Response:
    try:
        return session.post(target.url, data=body, headers=target.headers,
                            verify=target.verify, timeout=(CONNECT_TIMEOUT, ANSWER_TIMEOUT))
    except requests.exceptions.SSLError as e:
        raise PushError(f"{target.server}: TLS verification failed (pass the server's CA with "
                        f"--ca-cert): {e}") from e
    except requests.RequestException as e:
        raise PushError(f"{target.url}: {e}") from e


def push_image(path: Path, target: PushTarget, *, progress: Progress) -> PushResult:
    if not path.is_file():
        raise PushError(f"{path}: no such file")
    with requests.Session() as session:
        body = _UploadBody(path, progress)
        progress.total = len(body)
        try:
            response = _post(session, target, body=body)
        finally:
            body.close()
    if response.status_code not in (200, 201):
        raise PushError(describe_refusal(response))
    try:
        image = response.json()
    except ValueError as e:
        raise PushError(f"{target.url}: the answer is not JSON: {response.text[:200]}") from e
    return PushResult(image=image, new=response.status_code == 201)


def target_from(server: str, *, token: str | None, ca_cert: Path | None) -> PushTarget:
    if not server.startswith(("http://", "https://")):
        raise PushError(f"--server {server!r}: expected http(s)://HOST[:PORT]")
    token = token or os.environ.get(TOKEN_ENVIRONMENT, "")
    if not token:
        raise PushError(f"no API token: pass --token or set {TOKEN_ENVIRONMENT} (a token with "
                        "the images:write scope)")
    if ca_cert is not None and not ca_cert.is_file():
        raise PushError(f"--ca-cert {ca_cert}: no such file")
    return PushTarget(server=server.rstrip("/"), token=token,
                      verify=str(ca_cert) if ca_cert is not None else True)


def summary(result: PushResult) -> str:
    image = result.image
    return json.dumps({
        "image_id": image.get("id"), "product": image.get("product"),
        "version": image.get("version"), "build": image.get("build"),
        "size": image.get("size"), "sha256": image.get("sha256"),
        "status": "stored" if result.new else "already stored",
    })
