"""`kiln manufdata check` and `kiln manufdata schema`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.manufdata import manufdata_schema

EXAMPLE = Path(__file__).parents[2] / "kiln" / "manufdata-example.json"


def test_a_valid_file_passes_and_an_invalid_one_lists_every_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = json.loads(EXAMPLE.read_text())
    document["product"] = "no spaces allowed"
    document["colour"] = "blue"
    del document["layout"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    assert main(["manufdata", "check", str(EXAMPLE), str(bad), str(tmp_path / "none")]) == 1
    out, err = capsys.readouterr()
    assert f"{EXAMPLE}: valid manufData for acme-edge" in out
    assert "invalid manufData (3 problems)" in err
    assert "unknown key 'colour'" in err and "product:" in err and "layout" in err
    assert "none: cannot read it" in err
    assert main(["manufdata", "check", str(EXAMPLE)]) == 0


def test_the_schema_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["manufdata", "schema", "--id", "https://x/manufdata.json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == manufdata_schema(schema_id="https://x/manufdata.json")
