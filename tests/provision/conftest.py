from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.image.signing import SigningKey
from kiln.manufdata import ManufData, load_manufdata
from tests.provision.serverline import Line
from tests.server.live import LiveServer
from tests.server.signed_images import build_test_image

EXAMPLE = Path(__file__).parents[2] / "kiln" / "manufdata-example.json"
EditManufData = Callable[[dict[str, Any]], None]
MakeManufData = Callable[..., ManufData]


@pytest.fixture
def make_manufdata() -> MakeManufData:
    """A copy of kiln/manufdata-example.json, changed by `edit`, loaded as a unit would."""

    def make(edit: EditManufData | None = None) -> ManufData:
        document = json.loads(EXAMPLE.read_text())
        if edit is not None:
            edit(document)
        return load_manufdata(json.dumps(document))

    return make


def variant(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(v for v in document["variants"] if v["name"] == name)
    return found


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory, signing_key: SigningKey,
         signing_dir: Path) -> Iterator[Line]:
    work = tmp_path_factory.mktemp("fill")
    image, _manifest = build_test_image(work, [signing_key])
    server = LiveServer(data_dir=work / "server")
    server.trust(signing_dir / "test.pub")
    server.run()
    with server:
        _password, token = server.admin()
        image_id = server.push_image(token, image)
        kernel = os.urandom(3 * 1024 * 1024 + 17)
        server.put_file(token, "vmlinuz", kernel)
        yield Line(server, token, image_id, image, kernel)
