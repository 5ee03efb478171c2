from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from kiln.image.errors import ManifestError
from kiln.image.manifest import (
    MANIFEST_VERSION,
    Frame,
    Manifest,
    compressed_bound,
    parse_manifest,
    sorted_newest_first,
    version_key,
)
from tests.kiln.image.helpers import compress_frames, manifest_for

FRAME_SIZE = 4096


def sample() -> Manifest:
    payload = bytes(range(256)) * 40  # 10240 bytes: three frames of 4096, the last 2048
    frames = compress_frames(payload, FRAME_SIZE)
    return replace(
        manifest_for(frames, payload_size=len(payload), frame_size=FRAME_SIZE),
        variants=("apu2", "apu4"), description="test image",
    )


def document() -> dict[str, Any]:
    return sample().to_json()


def problems_of(value: dict[str, Any] | str) -> tuple[str, ...]:
    text = value if isinstance(value, str) else json.dumps(value)
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text)
    return caught.value.problems


def test_round_trip_through_canonical_text() -> None:
    manifest = sample()
    assert parse_manifest(manifest.canonical_text()) == manifest
    assert json.loads(manifest.canonical_text())["manifest_version"] == MANIFEST_VERSION


def test_canonical_text_is_sorted_and_compact() -> None:
    text = sample().canonical_text()
    assert ": " not in text and ", " not in text
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


def test_frame_output_sizes_and_totals() -> None:
    manifest = sample()
    assert [manifest.frame_output_size(i) for i in range(3)] == [4096, 4096, 2048]
    assert manifest.compressed_size == sum(f.length for f in manifest.frames)
    assert manifest.label == "demo 1.0 (build 0)"


def test_variants() -> None:
    manifest = sample()
    assert manifest.supports_variant("apu4")
    assert not manifest.supports_variant("apu6")
    assert replace(manifest, variants=("*",)).supports_variant("anything")


def test_versions_compare_numerically_and_sort_newest_first() -> None:
    assert version_key("1.10") > version_key("1.9")
    manifests = [replace(sample(), version=v, build=b)
                 for v, b in [("1.9", 3), ("1.10", 1), ("1.10", 2), ("0.99", 9)]]
    ordered = sorted_newest_first(manifests, lambda m: m)
    assert [(m.version, m.build) for m in ordered] == [
        ("1.10", 2), ("1.10", 1), ("1.9", 3), ("0.99", 9)
    ]


def test_malformed_json_is_a_manifest_error() -> None:
    (problem,) = problems_of('{"manifest_version": 1, "product": ')
    assert problem.startswith("not valid JSON")


def test_a_manifest_must_be_an_object() -> None:
    assert problems_of("[1, 2]") == ("the manifest must be a JSON object",)


@pytest.mark.parametrize("version", [2, 0, "1", None, True, 1.0])
def test_unsupported_manifest_version_is_refused_by_name(version: object) -> None:
    value = document()
    value["manifest_version"] = version
    text = json.dumps(value)
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text)
    (problem,) = caught.value.problems
    if isinstance(version, float):
        assert "numbers must be integers" in problem
    else:
        assert f"unsupported manifest_version {json.dumps(version)}" in problem


def test_missing_manifest_version_is_refused() -> None:
    value = document()
    del value["manifest_version"]
    assert problems_of(value) == (
        "unsupported manifest_version null; this Kiln reads version 1",
    )


def test_unknown_payload_kind_names_the_kind_and_the_known_ones() -> None:
    value = document()
    value["payload"]["kind"] = "raw-disk"
    (problem,) = problems_of(value)
    assert problem == 'payload.kind: unknown payload kind "raw-disk" (known: rootfs-tar)'


def test_unknown_compression() -> None:
    value = document()
    value["payload"]["compression"] = "xz"
    assert problems_of(value) == ('payload.compression: unknown compression "xz" (known: zstd)',)


def test_every_problem_is_listed_at_once() -> None:
    value = document()
    value["product"] = "bad product!"
    value["version"] = "1.x"
    value["build"] = -1
    value["created"] = "yesterday"
    value["color"] = "blue"
    value["variants"] = ["ok", ""]
    value["payload"]["frames"][1]["offset"] += 5
    value["payload"]["frames"][2]["sha256"] = "ABC"
    del value["payload"]["frame_size"]
    problems = problems_of(value)
    expected = [
        "manifest: unknown key 'color'",
        'product: "bad product!" is not a product name',
        'version: "1.x" is not a dotted numeric version like 2.1.0',
        "build: must be at least 0, got -1",
        'created: "yesterday" is not a UTC time like 2026-01-31T12:00:00Z',
        'variants[1]: "" is not a variant name or \'*\'',
        "payload: missing key 'frame_size'",
        "payload.frame_size: expected an integer, got null",
        "payload.frames[1].offset:",
        "payload.frames[2].offset:",  # it follows on from the shifted frame 1
        'payload.frames[2].sha256: "ABC" is not a lowercase hex sha256',
    ]
    for text in expected:
        assert any(p.startswith(text) for p in problems), (text, problems)
    assert len(problems) == len(expected)
    message = str(ManifestError(list(problems)))
    assert all(p in message for p in problems)


def test_floats_and_non_finite_numbers_are_refused() -> None:
    text = json.dumps(document()).replace('"build": 0', '"build": 0.5')
    assert problems_of(text)[0].startswith("not valid JSON: numbers must be integers")
    text = json.dumps(document()).replace('"build": 0', '"build": NaN')
    assert "numbers must be integers, got NaN" in problems_of(text)[0]


def test_booleans_are_not_integers() -> None:
    value = document()
    value["build"] = True
    assert problems_of(value) == ("build: expected an integer, got true",)


def test_frame_size_must_be_a_multiple_of_512_within_bounds() -> None:
    value = document()
    value["payload"]["frame_size"] = 5000
    problems = problems_of(value)
    assert problems[0].startswith("payload.frame_size: 5000 must be a multiple of 512")
    value["payload"]["frame_size"] = 1024
    assert problems_of(value)[0] == "payload.frame_size: must be at least 4096, got 1024"


def test_compressed_size_must_add_up() -> None:
    value = document()
    value["payload"]["compressed_size"] += 1
    (problem,) = problems_of(value)
    assert problem.startswith("payload.compressed_size:") and "the frames add up to" in problem


def test_frame_count_must_match_the_payload_size() -> None:
    value = document()
    value["payload"]["size"] += FRAME_SIZE  # needs a fourth frame
    (problem,) = problems_of(value)
    assert problem == (
        "payload.frames: 3 frames, but 14336 bytes in frames of 4096 need 4"
    )


def test_a_frame_longer_than_zstd_can_make_is_refused() -> None:
    value = document()
    too_long = compressed_bound(FRAME_SIZE) + 1
    grow = too_long - value["payload"]["frames"][2]["length"]
    value["payload"]["frames"][2]["length"] = too_long
    value["payload"]["compressed_size"] += grow
    (problem,) = problems_of(value)
    assert problem.startswith(f"payload.frames[2].length: {too_long} is more than a frame")


def test_frames_must_be_contiguous_from_zero() -> None:
    value = document()
    value["payload"]["frames"][0]["offset"] = 7
    problems = problems_of(value)
    assert problems[0] == "payload.frames[0].offset: 7, but the frames before it end at 0"


def test_empty_frames_and_variants() -> None:
    value = document()
    value["payload"]["frames"] = []
    value["variants"] = []
    problems = problems_of(value)
    assert "payload.frames: expected a non-empty list" in problems
    assert "variants: expected a non-empty list of hardware variant names" in problems


def test_unknown_keys_inside_a_frame_are_errors() -> None:
    value = document()
    value["payload"]["frames"][0]["crc"] = 1
    assert problems_of(value) == ("payload.frames[0]: unknown key 'crc'",)


def test_frame_dataclass_is_what_the_parser_returns() -> None:
    manifest = sample()
    assert isinstance(manifest.frames[0], Frame)
    assert manifest.frames[0].offset == 0
    assert manifest.frames[1].offset == manifest.frames[0].length
