"""The lab's flaky link: the first response to the chosen path is cut, the client's resume
goes through, and every request is recorded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from kiln.image.http import HttpSource
from kiln.image.source import RetryPolicy
from lab.faults import DroppingProxy
from lab.httpd import HttpServer

MIB = 1024 * 1024


def test_the_first_response_is_cut_and_a_resume_completes_it(tmp_path: Path) -> None:
    data = os.urandom(3 * MIB + 5)
    (tmp_path / "initrd.zst").write_bytes(data)
    with HttpServer(tmp_path) as http, DroppingProxy(upstream_port=http.port,
                                                     path_part="initrd",
                                                     drop_after_bytes=MIB) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/initrd.zst"
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            requests.get(url, timeout=30).content  # noqa: B018 - reading is the point
        assert proxy.dropped.is_set()
        source = HttpSource(url, retry=RetryPolicy(attempts=3, first_delay=0.01))
        try:
            assert source.read_exact(0, len(data)) == data  # not cut again
        finally:
            source.close()
        seen = proxy.requests()
    assert [(r.method, r.path, r.range) for r in seen] == [
        ("GET", "/initrd.zst", None), ("GET", "/initrd.zst", "bytes=0-")]


def test_a_resumed_download_asks_for_the_rest_with_range(tmp_path: Path) -> None:
    data = os.urandom(3 * MIB)
    (tmp_path / "initrd.zst").write_bytes(data)
    with HttpServer(tmp_path) as http, DroppingProxy(upstream_port=http.port,
                                                     path_part="initrd",
                                                     drop_after_bytes=2 * MIB) as proxy:
        source = HttpSource(f"http://127.0.0.1:{proxy.port}/initrd.zst",
                            retry=RetryPolicy(attempts=3, first_delay=0.01))
        try:
            got = b"".join(source.read_exact(offset, MIB) for offset in range(0, 3 * MIB, MIB))
        finally:
            source.close()
        assert got == data and source.resumes == 1
        ranges = [r.range for r in proxy.requests()]
    assert ranges == ["bytes=0-", f"bytes={MIB}-"]  # the cut block is asked for again


def test_an_upstream_that_is_down_looks_like_a_server_that_is_down(tmp_path: Path) -> None:
    with HttpServer(tmp_path) as http:
        port = http.port
    with DroppingProxy(upstream_port=port, path_part="x", drop_after_bytes=1) as proxy, \
            pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{proxy.port}/x", timeout=10)
