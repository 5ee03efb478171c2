"""A real `kiln server` with a trusted image, a boot file and a profile, for the host-side
tests of what a unit fetches (fill, preflight, hooks)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.server.conftest import example_manufdata
from tests.server.live import LiveServer


@dataclass(frozen=True)
class Line:
    server: LiveServer
    token: str
    image_id: str
    image: Path
    kernel: bytes

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def profile(self, files: list[dict[str, Any]],
                hooks: list[dict[str, Any]] | None = None) -> str:
        """Make (or replace) profile `line1` naming `files` (and `hooks`); return its
        mfgurl."""
        manufdata = example_manufdata() | {"files": files, "hooks": hooks or []}
        answer = requests.put(f"{self.server.url}/api/v1/profiles/line1", headers=self.headers(),
                              json={"manufdata": manufdata}, timeout=30)
        assert answer.ok, answer.text
        key = requests.post(f"{self.server.url}/api/v1/profiles/line1/line-key",
                            headers=self.headers(), timeout=30).json()["line_key"]
        return self.server.url.replace("://", f"://line1:{key}@") + "/mfg/line1/manufData.json"

    def image_spec(self, **changes: Any) -> dict[str, Any]:
        data = self.image.read_bytes()
        return {"url": f"images/{self.image_id}.upd", "sha256": hashlib.sha256(data).hexdigest(),
                "size_bytes": len(data), "destination": "Image/demo-1.0.0.upd",
                "kind": "image"} | changes

    def kernel_spec(self, **changes: Any) -> dict[str, Any]:
        return {"url": "files/vmlinuz", "sha256": hashlib.sha256(self.kernel).hexdigest(),
                "size_bytes": len(self.kernel), "destination": "boot/vmlinuz",
                "kind": "other"} | changes
