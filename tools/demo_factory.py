"""The demo's factory-line part, run by `tools/demo` against a running `kiln server`.

Makes a profile whose manufData names the pushed image, shows the iPXE script a line boots
with, then plays two units' conversations with the server from this host, with the
appliance's own client code (`kiln.serverclient`, `kiln.events`): one passes, one fails at
its disks. (The manufacture issue runs the same conversation inside a QEMU appliance.)
Prints the day's summary and reveals the passing unit's escrowed password as an operator.
The last line of output is the profile's line key, for the shell to use.

    demo_factory.py SERVER_URL TOKEN IMAGE_ID IMAGE_SHA256 IMAGE_SIZE WORK_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import requests

from kiln.events import EventRecorder, Level, Result
from kiln.serverclient import ServerClient, UnitReport

EXAMPLE = Path(__file__).parents[1] / "kiln" / "manufdata-example.json"


def _check(response: requests.Response) -> Any:
    if not response.ok:
        sys.exit(f"demo: {response.request.method} {response.url}: {response.status_code} "
                 f"{response.text}")
    return response.json() if "json" in response.headers.get("content-type", "") else None


def _manufdata(image_id: str, sha256: str, size: int) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(EXAMPLE.read_text())
    document.pop("server")
    document["product"] = "demo"
    document["files"] = [{"url": f"images/{image_id}.upd", "sha256": sha256,
                          "size_bytes": size, "destination": "Image/demo-1.0.0-1.upd",
                          "kind": "image"}]
    return document


def _unit(client: ServerClient, *, serial: str, fails: bool, spool: Path) -> str:
    client.report_unit(UnitReport(
        serial=serial, variant="edge-100",
        dmi={"sys_vendor": "Supermicro", "product_name": "SYS-5019C-M"},
        macs=[f"3c:ec:ef:00:00:{int(serial[-2:]):02x}"],
        hardware={"disks": [{"path": "/dev/nvme0n1", "model": "Samsung PM9A3",
                             "size_bytes": 960197124096}]}))
    recorder = EventRecorder(serial=serial, spool_dir=spool)
    recorder.start("manufacture")
    with recorder.stage("manufacture/hardware"):
        recorder.log("manufacture/hardware", Level.INFO, "matched variant edge-100")
    recorder.spool.flush(client.send_events)
    password = client.credentials(serial).admin_password
    recorder.start("manufacture/disks")
    if fails:
        recorder.finish("manufacture/disks", Result.FAIL, "sgdisk: /dev/nvme0n1: I/O error")
        recorder.finish("manufacture", Result.FAIL, "manufacture/disks failed")
    else:
        recorder.progress("manufacture/disks", done=700, total=700, message="image written")
        recorder.finish("manufacture/disks", Result.SUCCESS)
        recorder.finish("manufacture", Result.SUCCESS)
    sent = recorder.spool.flush(client.send_events)
    print(f"  {serial}: {'failed' if fails else 'passed'}; {sent} events sent in the last "
          f"batch, admin password received ({len(password)} characters)")
    return password


def main(arguments: list[str]) -> None:
    url, token, image_id, sha256, size, work = arguments
    headers = {"Authorization": f"Bearer {token}"}
    answer = _check(requests.put(f"{url}/api/v1/profiles/line1", headers=headers, timeout=30,
                                 json={"manufdata": _manufdata(image_id, sha256, int(size)),
                                       "kernel_file": "vmlinuz", "initrd_file": "initrd.zst"}))
    key = answer["line_key"]
    print(f"profile line1, revision {answer['revision']}; manufData at {answer['mfg_path']}")
    script = requests.get(f"{url}/mfg/line1/boot.ipxe", auth=("line1", key), timeout=30)
    print("the iPXE script a line boots with (line key elided):")
    print("  " + script.text.replace(key, "…").strip().replace("\n", "\n  "))

    mfgurl = url.replace("://", f"://line1:{key}@") + "/mfg/line1/manufData.json"
    print("two units talk to the server with the appliance's client code:")
    with ServerClient(mfgurl) as client:
        client.manufdata()
        password = _unit(client, serial="DEMO-0001", fails=False, spool=Path(work) / "u1")
        _unit(client, serial="DEMO-0002", fails=True, spool=Path(work) / "u2")

    today = _check(requests.get(f"{url}/api/v1/stats/today", headers=headers, timeout=30))
    made = today["finished"].get("manufacture", {})
    print(f"today: {made.get('succeeded', 0)} manufactured, {made.get('failed', 0)} failed; "
          f"top failure: {today['top_failures'][0]['stage']} "
          f"({today['top_failures'][0]['example']})")
    report = _check(requests.get(f"{url}/api/v1/units/DEMO-0001/qa-report", headers=headers,
                                 timeout=30))
    print(f"QA report of DEMO-0001: {report['result']}, {len(report['stages'])} stages")
    revealed = _check(requests.post(f"{url}/api/v1/units/DEMO-0001/credentials/reveal",
                                    headers=headers, timeout=30))
    same = "the same as" if revealed["admin_password"] == password else "DIFFERENT from"
    print(f"an operator reveals DEMO-0001's escrowed password (audited): {same} what the unit "
          "received")
    if revealed["admin_password"] != password:
        sys.exit(1)
    print(key)


if __name__ == "__main__":
    if len(sys.argv) != 7:
        sys.exit(__doc__)
    main(sys.argv[1:])
