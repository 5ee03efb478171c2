"""Software modules and their artifacts: what actions install.

Every uploaded `.upd` image is a module at once (kind `os`, name = product, version =
`version+build`, its variants as the compatible hardware) with the image file as its one
artifact. Operators may also make a module by hand and upload artifacts to it (any file a
hawkBit client installs, e.g. SWUpdate's `.swu`).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, delete, func, select

from kiln.image.manifest import release_of
from server.context import now_ns
from server.db.schema import actions, artifacts, software_modules

IMAGE_MODULE_KIND = "os"


class ModuleInUse(Exception):
    pass


def image_filename(*, product: str, version: str, build: int) -> str:
    return f"{product}-{release_of(version, build)}.upd"


def add_image_module(connection: Connection, *, image: Any, who: str) -> int:
    """The module (and artifact) of a stored image row; returns the module id."""
    module_id: int = connection.execute(software_modules.insert().values(
        tenant=image.tenant, kind=IMAGE_MODULE_KIND, name=image.product,
        version=release_of(image.version, image.build), image_id=image.id,
        variants=image.variants, created_ns=now_ns(), created_by=who,
    ).returning(software_modules.c.id)).scalar_one()
    connection.execute(artifacts.insert().values(
        module_id=module_id, sha256=image.sha256, size=image.size, created_ns=now_ns(),
        filename=image_filename(product=image.product, version=image.version,
                                build=image.build)))
    return module_id


def add_module(connection: Connection, *, tenant: str, kind: str, name: str, version: str,
               variants: list[str], who: str) -> int:
    module_id: int = connection.execute(software_modules.insert().values(
        tenant=tenant, kind=kind, name=name, version=version, image_id=None,
        variants=json.dumps(variants), created_ns=now_ns(), created_by=who,
    ).returning(software_modules.c.id)).scalar_one()
    return module_id


def put_artifact(connection: Connection, *, module_id: int, filename: str, sha256: str,
                 size: int) -> str | None:
    """Add or replace a module's artifact; returns the sha256 it replaced, if any."""
    old = connection.execute(select(artifacts.c.sha256).where(
        artifacts.c.module_id == module_id, artifacts.c.filename == filename)).scalar()
    if old is not None:
        connection.execute(delete(artifacts).where(artifacts.c.module_id == module_id,
                                                   artifacts.c.filename == filename))
    connection.execute(artifacts.insert().values(module_id=module_id, filename=filename,
                                                 sha256=sha256, size=size,
                                                 created_ns=now_ns()))
    return old


def actions_using(connection: Connection, module_id: int) -> int:
    count: int = connection.execute(select(func.count()).select_from(actions).where(
        actions.c.module_id == module_id)).scalar_one()
    return count


def remove_image_module(connection: Connection, image_id: str) -> None:
    """Before an image is deleted: its module goes too, unless an action names it."""
    module_id = connection.execute(select(software_modules.c.id).where(
        software_modules.c.image_id == image_id)).scalar()
    if module_id is None:
        return
    used = actions_using(connection, module_id)
    if used:
        raise ModuleInUse(f"software module {module_id} of this image is named by {used} "
                          "action(s); it stays as long as their history does")
    connection.execute(delete(artifacts).where(artifacts.c.module_id == module_id))
    connection.execute(delete(software_modules).where(software_modules.c.id == module_id))


def module_json(row: Any, files: list[Any]) -> dict[str, Any]:
    return {"id": row.id, "tenant": row.tenant, "kind": row.kind, "name": row.name,
            "version": row.version, "image_id": row.image_id,
            "variants": json.loads(row.variants), "created_ns": row.created_ns,
            "created_by": row.created_by,
            "artifacts": [{"filename": f.filename, "sha256": f.sha256, "size": f.size}
                          for f in files]}
