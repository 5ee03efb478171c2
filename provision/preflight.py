"""Before the first write: is every file manufData names there, as big as it says, and (when
the server tells) with the sha256 it says?

One HEAD request per file and hook script. Every problem is listed at once, and a unit whose
files cannot all be had fails with its disks untouched, instead of half-way through filling
RECOVERY. The Kiln server answers with a strong ETag that is the file's sha256, so a profile
naming the wrong hash is caught here too; other servers' files are checked by hash when they
are downloaded (`provision.fill`).
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.errors import KilnError
from kiln.manufdata import ManufData
from kiln.serverclient import ServerClient, ServerError


class PreflightError(KilnError):
    pass


@dataclass(frozen=True, kw_only=True)
class Wanted:
    where: str  # "files[2] boot/vmlinuz", "hooks[0] burn-in"
    url: str  # as manufData says it (may be relative)
    sha256: str
    size_bytes: int | None


def wanted(manufdata: ManufData, *, variant: str | None) -> list[Wanted]:
    """The files and the hook scripts this unit will fetch."""
    found = [Wanted(where=f"files[{index}] {spec.destination}", url=spec.url,
                    sha256=spec.sha256, size_bytes=spec.size_bytes)
             for index, spec in enumerate(manufdata.files)]
    found += [Wanted(where=f"hooks[{index}] {hook.name}", url=hook.url, sha256=hook.sha256,
                     size_bytes=None)
              for index, hook in enumerate(manufdata.hooks)
              if not hook.variants or variant in hook.variants]
    return found


def problems(client: ServerClient, items: list[Wanted]) -> list[str]:
    found: list[str] = []
    for item in items:
        try:
            probe = client.probe(item.url)
        except ServerError as e:
            found.append(f"{item.where}: {e}")
            continue
        if item.size_bytes is not None and probe.size_bytes is not None \
                and probe.size_bytes != item.size_bytes:
            found.append(f"{item.where}: {probe.url} is {probe.size_bytes} bytes, manufData "
                         f"says {item.size_bytes}")
        if probe.sha256 is not None and probe.sha256 != item.sha256:
            found.append(f"{item.where}: {probe.url} has sha256 {probe.sha256}, manufData "
                         f"says {item.sha256}")
    return found


def check_sources(client: ServerClient, manufdata: ManufData, *, variant: str | None) -> int:
    """Raise `PreflightError` listing every file that cannot be had as manufData describes
    it; return how many were checked."""
    items = wanted(manufdata, variant=variant)
    found = problems(client, items)
    if found:
        raise PreflightError(f"{len(found)} of {len(items)} file(s) cannot be had as manufData "
                             "says:\n" + "\n".join(found))
    return len(items)
