from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kiln.manufdata import ManufData, load_manufdata

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
