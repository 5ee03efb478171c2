from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings

from kiln.contract import ContractError, check, parse, to_json
from kiln.manufdata import (
    GIB,
    MIB,
    PARTITION_OVERHEAD_BYTES,
    DiskLayout,
    DiskRole,
    DmiMatch,
    FileKind,
    Firmware,
    HookPoint,
    ManufData,
    MemorySpec,
    NicSpec,
    OnFailure,
    RecoveryDisk,
    Transport,
    load_manufdata,
    manufdata_schema,
    resolve_url,
)
from tests.kiln.test_contract import accepted, documents

EXAMPLE = Path(__file__).parents[2] / "kiln" / "manufdata-example.json"
SHA = "0" * 64


def example() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(EXAMPLE.read_text())
    return document


def problems(document: Any) -> tuple[str, ...]:
    text = document if isinstance(document, str | bytes) else json.dumps(document)
    with pytest.raises(ContractError) as caught:
        load_manufdata(text)
    return caught.value.problems


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = manufdata_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_example_loads() -> None:
    manufdata = load_manufdata(EXAMPLE.read_bytes())
    assert manufdata.schema == 1 and manufdata.product == "acme-edge"
    assert manufdata.server is not None and manufdata.server.ca_pem is None
    assert [f.kind for f in manufdata.files] == [FileKind.IMAGE, FileKind.KERNEL,
                                                 FileKind.INITRD, FileKind.OTHER]
    assert [v.name for v in manufdata.variants] == ["edge-100", "edge-200", "qemu-lab"]
    edge = manufdata.variants[0]
    assert edge.memory is not None and edge.memory.tolerance_percent == 5.0  # the default
    assert edge.disks[0].transport is Transport.NVME and edge.disks[0].count == 1
    assert edge.disk(DiskRole.PRIMARY) is edge.disks[0] and edge.disk(DiskRole.DATA) is None
    assert manufdata.variants[2].cpu is None and manufdata.variants[2].pci == ()
    assert manufdata.layout.firmware is Firmware.AUTO
    assert manufdata.layout.recovery_disk is RecoveryDisk.SAME
    assert manufdata.layout.data_size_bytes == 0
    assert [(h.point, h.on_failure) for h in manufdata.hooks] == [
        (HookPoint.AFTER_VALIDATE, OnFailure.FAIL), (HookPoint.BEFORE_REBOOT, OnFailure.WARN)]
    assert load_manufdata(EXAMPLE.read_text()) == manufdata


def test_the_example_and_its_round_trip_satisfy_the_schema(validator: Any) -> None:
    validator.validate(example())
    manufdata = load_manufdata(EXAMPLE.read_text())
    document = to_json(manufdata)
    validator.validate(document)
    assert load_manufdata(json.dumps(document)) == manufdata
    check(manufdata)


def test_the_schema_is_published_with_descriptions() -> None:
    schema = manufdata_schema(schema_id="http://server/schemas/manufdata-1.json")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "http://server/schemas/manufdata-1.json"
    assert schema["title"] == "ManufData" and schema["properties"]["schema"] == {"const": 1}
    assert schema["required"] == ["schema", "product", "files", "variants", "layout"]
    assert set(schema["$defs"]) == {
        "CpuSpec", "DiskLayout", "DiskSpec", "DmiMatch", "FileSpec", "HookStep", "MemorySpec",
        "NicSpec", "PciDeviceSpec", "ServerEndpoints", "UsbDeviceSpec", "Variant"}
    assert all(definition["additionalProperties"] is False
               for definition in schema["$defs"].values())
    layout = schema["$defs"]["DiskLayout"]["properties"]
    assert "DATA takes the rest" in layout["data_size_bytes"]["description"]
    assert layout["recovery_size_bytes"]["minimum"] == 256 * MIB


def test_every_problem_is_listed_with_its_path() -> None:
    document = example()
    document["colour"] = "blue"
    document["files"][0]["sha256"] = document["files"][0]["sha256"].upper()
    document["variants"][0]["name"] = "Edge 100"
    document["variants"][0]["memory"]["tolerance_percent"] = 80
    document["variants"][1]["disks"][0]["min_size_bytes"] = "abc"
    document["variants"][1]["disks"][1]["transport"] = "scsi"
    document["variants"][2]["nics"]["mac_ouis"] = ["52-54-00"]
    document["layout"]["firmware"] = "efi"
    del document["hooks"][0]["sha256"]
    document["hooks"][1]["timeout_seconds"] = True
    assert problems(document) == (
        "unknown key 'colour'",
        'files[0].sha256: expected a string matching ^[0-9a-f]{64}$, got "6105D6CC76AF400325'
        'E94D588CE511BE5BFDBB73B437DC51ECA43917...',
        'variants[0].name: expected a string matching ^[a-z0-9][a-z0-9._-]{0,63}$, got '
        '"Edge 100"',
        "variants[0].memory.tolerance_percent: expected a number from 0 to 50, got 80",
        'variants[1].disks[0].min_size_bytes: expected an integer ≥ 1, got "abc"',
        'variants[1].disks[1].transport: expected one of "nvme", "sata", "sas", "virtio", '
        '"usb", "mmc", "any", got "scsi"',
        'variants[2].nics.mac_ouis[0]: expected a string matching '
        '^[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}$, got "52-54-00"',
        'layout.firmware: expected one of "uefi", "bios", "auto", got "efi"',
        "hooks[0]: missing key 'sha256'",
        "hooks[1].timeout_seconds: expected an integer from 1 to 86400, got true",
    )


def test_rules_between_fields_are_listed_together() -> None:
    document = example()
    document["files"][3]["destination"] = "Image/acme-edge-2.3.0-41.upd"  # a repeat
    document["files"].append({"url": "x", "sha256": SHA, "size_bytes": 1,
                              "destination": "../etc/passwd"})
    document["files"].append({"url": "x", "sha256": SHA, "size_bytes": 1,
                              "destination": "/boot/evil"})
    document["files"].append({"url": "file:///etc/shadow", "sha256": SHA, "size_bytes": 1,
                              "destination": "state/identity.json"})
    document["files"].append({"url": "x.upd", "sha256": SHA, "size_bytes": 1,
                              "destination": "images/x.upd", "kind": "image"})
    document["variants"][2]["name"] = "edge-100"
    document["variants"][1]["dmi"] = {}
    document["variants"][1]["disks"][0]["max_size_bytes"] = 1
    document["variants"][2]["disks"][0]["min_size_bytes"] = 20 * GIB
    document["variants"][0]["cpu"]["min_cores"] = 8
    document["layout"]["primary_size_bytes"] = None  # with data_size_bytes 0
    document["hooks"][1]["name"] = "burn-in"
    document["hooks"][0]["variants"] = ["edge-100", "edge-300"]
    assert problems(document) == (
        "files[4].destination: '../etc/passwd': no '..', '.', empty parts or backslashes "
        "allowed",
        "files[5].destination: '/boot/evil' is absolute: expected a path relative to RECOVERY",
        "files[6].url: 'file:///etc/shadow': expected an http(s) URL or one relative to "
        "manufData's",
        "files[6].destination: 'state/identity.json' is inside a directory Kiln owns",
        "files[7].destination: 'images/x.upd': an image goes to Image/<name>.upd",
        "variants[0].cpu.max_cores: 4 is below min_cores 8",
        "variants[1].disks[0].max_size_bytes: 1 is below min_size_bytes",
        "layout.data_size_bytes: 0 (DATA takes the rest) needs primary_size_bytes: PRIMARY "
        "and DATA cannot both take the rest",
        "files[3].destination: 'Image/acme-edge-2.3.0-41.upd' repeats files[0]",
        "variants[2].name: 'edge-100' repeats variants[0]",
        "hooks[1].name: 'burn-in' repeats hooks[0]",
        "variants[1].dmi: matches every unit, so the variants after it never would",
        "hooks[0].variants: no variant is named 'edge-300'",
    )


def test_a_disk_must_hold_the_layout() -> None:
    document = example()
    document["variants"][2]["disks"][0]["min_size_bytes"] = 20 * GIB
    layout = load_manufdata(EXAMPLE.read_text()).layout
    need = 256 * MIB + 8 * GIB + 16 * GIB + PARTITION_OVERHEAD_BYTES
    assert layout.minimum_disk_bytes(DiskRole.PRIMARY) == need
    assert problems(document) == (
        f"variants[2].disks[0].min_size_bytes: {20 * GIB} is too small for the layout, "
        f"which needs {need} bytes on the primary disk",)


def test_a_separate_recovery_disk() -> None:
    document = example()
    document["layout"]["recovery_disk"] = "separate"
    document["variants"][0]["disks"].append({"role": "recovery", "min_size_bytes": 8 * GIB,
                                             "transport": "sata", "model": "SATADOM-*"})
    document["variants"][1]["disks"].append({"role": "recovery", "min_size_bytes": 16 * GIB,
                                             "count": 2})
    assert problems(document) == (
        "variants[1].disks[2].count: a recovery disk spec names exactly one disk",
        "variants[0].disks[1].min_size_bytes: 8589934592 is too small for the layout, which "
        f"needs {256 * MIB + 8 * GIB + PARTITION_OVERHEAD_BYTES} bytes on the recovery disk",
        "variants[2].disks: expected 1 disk spec(s) with role recovery, got 0 "
        "(layout.recovery_disk is separate)",
    )
    layout = DiskLayout(recovery_disk=RecoveryDisk.SEPARATE, firmware=Firmware.BIOS,
                        recovery_size_bytes=GIB, primary_size_bytes=4 * GIB,
                        data_size_bytes=GIB)
    assert layout.minimum_disk_bytes(DiskRole.RECOVERY) == GIB + PARTITION_OVERHEAD_BYTES
    assert layout.minimum_disk_bytes(DiskRole.PRIMARY) == 5 * GIB + PARTITION_OVERHEAD_BYTES


def test_the_primary_disk_and_the_images() -> None:
    document = example()
    document["variants"][2]["disks"][0]["role"] = "any"
    document["files"] = document["files"][1:3]
    document["files"][1]["kind"] = "other"
    assert problems(document) == (
        "files: no file of kind 'image': a unit needs one to restore from",
        "files: a 'kernel' file needs an 'initrd' file, and the other way round",
        "variants[2].disks: expected 1 disk spec(s) with role primary, got 0 "
        "(layout.recovery_disk is same)",
    )


@pytest.mark.parametrize(("text", "problem"), [
    ('{"schema": 1,\n  "product": }', "not JSON: Expecting value at line 2, column 14"),
    ("", "not JSON: Expecting value at line 1, column 1"),
    (b"\xff\xfe{", "not JSON: "),
    ('{"schema": 1, "x": NaN}', "not JSON: NaN is not a JSON number"),
    ("[1]", "manufData must be a JSON object"),
    ('{"schema": 2, "product": 5}', "schema 2 is not supported (this Kiln reads schema 1)"),
    ('{"schema": 0}', "schema 0 is not supported (this Kiln reads schema 1)"),
])
def test_documents_refused_before_their_fields(text: str | bytes, problem: str) -> None:
    found = problems(text)
    assert len(found) == 1 and found[0].startswith(problem)


def test_the_schema_key() -> None:
    document = example()
    del document["schema"]
    assert problems(document) == ("missing key 'schema'",)
    document["schema"] = "1"
    assert problems(document) == ('schema: expected 1, got "1"',)
    document["schema"] = True
    assert problems(document) == ("schema: expected 1, got true",)


def test_duplicate_keys_are_refused() -> None:
    text = EXAMPLE.read_text().replace('"product": "acme-edge",',
                                       '"product": "acme-edge", "product": "acme-core",')
    assert problems(text) == ("duplicate key 'product' in an object",)
    text = text.replace('"schema": 1', '"schema": 1, "colour": 1')
    assert problems(text) == ("duplicate key 'product' in an object", "unknown key 'colour'")


def test_the_message() -> None:
    with pytest.raises(ContractError) as caught:
        load_manufdata('{"schema": 1}')
    assert str(caught.value) == (
        "invalid manufData (4 problems):\n  missing key 'product'\n  missing key 'files'\n"
        "  missing key 'variants'\n  missing key 'layout'")


def test_dmi_matching() -> None:
    match = DmiMatch(sys_vendor="Supermicro", product_name="SYS-5019C-*")
    unit = {"sys_vendor": "Supermicro ", "product_name": "SYS-5019C-MR", "board_name": "X"}
    assert match.matches(unit)
    assert not match.matches({**unit, "sys_vendor": "supermicro"})  # case matters
    assert not match.matches({"product_name": "SYS-5019C-MR"})  # a value it lacks
    assert DmiMatch().matches({}) and DmiMatch().matches_all
    manufdata = load_manufdata(EXAMPLE.read_text())
    chosen = manufdata.variant_for({"sys_vendor": "Supermicro", "product_name": "SYS-E300-9D-4",
                                    "board_name": "X11SDV-4C-TP8F"})
    assert chosen is not None and chosen.name == "edge-200"
    assert manufdata.variant_for({"sys_vendor": "Dell Inc."}) is None


def test_memory_and_nic_helpers() -> None:
    memory = MemorySpec(size_bytes=16 * GIB)
    assert memory.accepts(16 * GIB - 16 * GIB // 20) and memory.accepts(16 * GIB * 21 // 20)
    assert not memory.accepts(16 * GIB - 16 * GIB // 20 - 1)
    nics = NicSpec(count=2, mac_ouis=("AC:1F:6B",))
    assert nics.accepts_mac("ac:1f:6b:01:02:03") and not nics.accepts_mac("52:54:00:01:02:03")
    assert NicSpec(count=1).accepts_mac("52:54:00:01:02:03")


@pytest.mark.parametrize(("url", "resolved"), [
    ("images/a.upd", "http://srv:8080/mfg/images/a.upd"),
    ("/files/a.upd", "http://srv:8080/files/a.upd"),
    ("https://cdn.example/a.upd", "https://cdn.example/a.upd"),
])
def test_relative_urls(url: str, resolved: str) -> None:
    assert resolve_url("http://srv:8080/mfg/manufData.json", url) == resolved


Mutation = Callable[[dict[str, Any]], None]

BAD: list[Mutation] = [
    lambda d: d.update(schema=2),
    lambda d: d.update(product=""),
    lambda d: d.update(files="none"),
    lambda d: d.update(variants=[]),
    lambda d: d["files"][0].update(size_bytes=-1),
    lambda d: d["files"][0].update(kind="firmware"),
    lambda d: d["files"][0].update(url="has space"),
    lambda d: d["files"][0].update(destination=""),
    lambda d: d["server"].update(ca_pem="not a certificate"),
    lambda d: d["server"].pop("events_url"),
    lambda d: d["variants"][0].update(disks=[]),
    lambda d: d["variants"][0]["dmi"].update(chassis="x"),
    lambda d: d["variants"][0]["cpu"].update(sockets=0),
    lambda d: d["variants"][0]["cpu"].update(flags=["AES"]),
    lambda d: d["variants"][0]["memory"].update(tolerance_percent=-1),
    lambda d: d["variants"][0]["pci"][0].update(vendor_id="808g"),
    lambda d: d["variants"][0]["usb"][0].update(count=0),
    lambda d: d["layout"].update(recovery_size_bytes=255 * MIB),
    lambda d: d["layout"].update(primary_size_bytes=GIB - 1),
    lambda d: d["layout"].update(data_size_bytes=-1),
    lambda d: d["hooks"][0].update(point="after_reboot"),
    lambda d: d["hooks"][0].update(timeout_seconds=0),
]

GOOD: list[Mutation] = [
    lambda d: d.update(server=None),
    lambda d: d.pop("hooks"),
    lambda d: d["layout"].update(data_size_bytes=None, primary_size_bytes=None),
    lambda d: d["variants"][0]["memory"].update(tolerance_percent=0.5),
    lambda d: d["files"][0].update(size_bytes=7.34e8),  # an integral number is an integer
    lambda d: d["server"].update(ca_pem="-----BEGIN CERTIFICATE-----\nMIIB\n"
                                        "-----END CERTIFICATE-----\n"),
]


@pytest.mark.parametrize("mutate", BAD)
def test_the_schema_and_the_parser_refuse_the_same(mutate: Mutation, validator: Any) -> None:
    document = example()
    mutate(document)
    assert not validator.is_valid(document)
    assert problems(document)


@pytest.mark.parametrize("mutate", GOOD)
def test_the_schema_and_the_parser_accept_the_same(mutate: Mutation, validator: Any) -> None:
    document = example()
    mutate(document)
    assert validator.is_valid(document)
    load_manufdata(json.dumps(document))


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.large_base_example])
@given(documents(ManufData))
def test_the_schema_says_what_the_parser_checks_field_by_field(document: Any) -> None:
    schema = manufdata_schema()
    assert jsonschema.Draft202012Validator(schema).is_valid(document) == accepted(
        ManufData, document)


def test_models_built_in_python_are_checked() -> None:
    manufdata = load_manufdata(EXAMPLE.read_text())
    variant = dataclasses.replace(manufdata.variants[0], name="Bad Name")
    broken = dataclasses.replace(manufdata, variants=(variant, *manufdata.variants[1:]))
    with pytest.raises(ContractError, match=r"variants\[0\]\.name"):
        check(broken)
    assert parse(ManufData, copy.deepcopy(to_json(manufdata))) == manufdata


def test_the_published_schema_is_the_models() -> None:
    published = Path(__file__).parents[2] / "docs" / "manufdata.schema.json"
    assert json.loads(published.read_text()) == manufdata_schema(), \
        "docs/manufdata.schema.json is stale: kiln manufdata schema > docs/manufdata.schema.json"
