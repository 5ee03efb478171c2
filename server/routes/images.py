"""Signed images and boot files: upload, list, download, delete; and the factory line's
downloads of both.

An image upload is the raw `.upd`, streamed into the blob store's temporary area and checked
there with the same reader the appliance uses (signature against the trust directory, then
every frame and the exact length). Only a verified image is published (blob renamed into
place, row inserted, audit recorded); anything else is refused with 422 and leaves nothing
behind. Boot files (kernels, ramdisks, anything manufData names) are stored by name.

Factory lines download under `/mfg/{profile}/` with the profile's line key: `files/NAME` and
`images/ID.upd`, the relative URLs a profile's manufData and iPXE script use. A line may fetch
any boot file and any image of its tenant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import ColumnElement, Engine, Table, delete, select, update
from starlette.concurrency import run_in_threadpool

from kiln.errors import KilnError
from kiln.image.errors import ImageError, ManifestError
from kiln.image.manifest import Manifest
from kiln.image.reader import ImageReader
from kiln.image.signing import TrustStore
from kiln.image.source import FileSource
from server import audit, blobs
from server.auth import Operator, Scope, line_for, require
from server.context import AppContext, context_of, now_ns
from server.db.schema import artifacts, files, images
from server.ddi import catalog, latest
from server.ddi.poll import record_changes
from server.errors import ApiError, not_found
from server.routes.profiles import FILE_NAME, PROFILE_NAME
from server.store import BlobStore, BlobWriter

TENANT = "default"
IMAGE_ID = r"^[0-9a-f]{64}$"
ImageId = Annotated[str, Path(pattern=IMAGE_ID, description="sha256 of the signed manifest")]
FileName = Annotated[str, Path(pattern=FILE_NAME)]
ProfileName = Annotated[str, Path(pattern=PROFILE_NAME)]
ImagesWriter = Annotated[Operator, Depends(require(Scope.IMAGES_WRITE))]
FilesWriter = Annotated[Operator, Depends(require(Scope.MANUFDATA_WRITE))]
Reader = Annotated[Operator, Depends(require(Scope.UNITS_READ))]

_UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}

router = APIRouter()
api = APIRouter(prefix="/api/v1")
line_downloads = APIRouter(prefix="/mfg/{profile}", tags=["factory line"])


@dataclass(frozen=True)
class VerifiedImage:
    image_id: str
    manifest: Manifest
    key_ids: tuple[str, ...]  # the trusted keys whose signatures were checked


def store_of(context: AppContext) -> BlobStore:
    return BlobStore(context.config.store_dir)


def image_json(row: Any) -> dict[str, Any]:
    return {"id": row.id, "product": row.product, "version": row.version, "build": row.build,
            "variants": json.loads(row.variants), "payload": row.payload,
            "key_ids": json.loads(row.key_ids), "sha256": row.sha256, "size": row.size,
            "created_ns": row.created_ns, "uploaded_by": row.uploaded_by,
            "tenant": row.tenant, "download_path": f"/api/v1/images/{row.id}/file",
            "mfg_path": f"images/{row.id}.upd"}


def file_json(row: Any) -> dict[str, Any]:
    return {"name": row.name, "sha256": row.sha256, "size": row.size,
            "created_ns": row.created_ns, "download_path": f"/api/v1/files/{row.name}",
            "mfg_path": f"files/{row.name}"}


def _trust(context: AppContext) -> TrustStore:
    try:
        return context.trust()
    except KilnError as e:
        raise ApiError(409, "the server cannot check image signatures: put the signing keys' "
                            "public halves (*.pub) in its trust directory",
                       problems=[str(e)]) from None


def verify_upload(path: FilePath, trust: TrustStore) -> VerifiedImage:
    """Check an uploaded `.upd` as the appliance would: signature, then every frame."""
    source = FileSource(path)
    try:
        reader = ImageReader(source, trust)
        reader.verify()
    except ManifestError as e:
        raise ApiError(422, "the image's manifest is invalid", problems=e.problems) from None
    except ImageError as e:
        raise ApiError(422, f"the upload is not a valid image signed by a trusted key: {e}"
                       ) from None
    finally:
        source.close()
    signers = dict.fromkeys(s.key_id for s in reader.envelope.signatures if s.key_id in
                            trust.keys)
    return VerifiedImage(image_id=reader.image_id, manifest=reader.manifest,
                         key_ids=tuple(signers))


def remove_if_unreferenced(engine: Engine, store: BlobStore, *, sha256: str) -> bool:
    """Delete a blob no image, file or artifact names any more (call under `store.lock()`)."""
    with engine.connect() as connection:
        used = any(connection.execute(select(column).where(table.c.sha256 == sha256)
                                      .limit(1)).first()
                   for table, column in ((images, images.c.id), (files, files.c.name),
                                         (artifacts, artifacts.c.id)))
    return False if used else store.remove(sha256)


def _publish_image(context: AppContext, writer: BlobWriter, *, verified: VerifiedImage,
                   who: Operator, remote: str) -> tuple[Any, bool]:
    """(the image's row, whether it is new): the same image pushed again changes nothing."""
    store = store_of(context)
    manifest = verified.manifest
    with store.lock():
        with context.engine.connect() as connection:
            existing = connection.execute(
                select(images).where(images.c.id == verified.image_id)).first()
        if existing is not None:
            return existing, False
        blob = writer.commit()
        try:
            with context.engine.begin() as connection:
                connection.execute(images.insert().values(
                    id=verified.image_id, tenant=TENANT, sha256=blob.sha256, size=blob.size,
                    product=manifest.product, version=manifest.version, build=manifest.build,
                    variants=json.dumps(list(manifest.variants)),
                    payload=manifest.payload_kind.value,
                    key_ids=json.dumps(list(verified.key_ids)), created_ns=now_ns(),
                    uploaded_by=who.username))
                row = connection.execute(
                    select(images).where(images.c.id == verified.image_id)).one()
                catalog.add_image_module(connection, image=row, who=who.username)
                following = latest.follow_latest_everywhere(connection, tenant=TENANT)
                record_changes(connection, tenant=TENANT, controller_ids=following)
                audit.record(connection, actor=who.actor, action="image.push",
                             target=verified.image_id, remote=remote, details={
                                 "product": manifest.product, "version": manifest.version,
                                 "build": manifest.build, "sha256": blob.sha256,
                                 "size": blob.size})
        except BaseException:
            if writer.created:
                store.remove(blob.sha256)
            raise
    for controller_id in following:
        context.ddi.polls.forget(TENANT, controller_id)
    return row, True


def _push(context: AppContext, writer: BlobWriter, *, who: Operator,
          remote: str) -> tuple[Any, bool]:
    verified = verify_upload(writer.path, _trust(context))
    return _publish_image(context, writer, verified=verified, who=who, remote=remote)


@api.post("/images", tags=["images"], openapi_extra=_UPLOAD_BODY, status_code=201,
          summary="Upload a signed .upd image (the raw file as the body); verified before "
                  "it is stored: 201 new, 200 already there")
async def push_image(request: Request, who: ImagesWriter) -> JSONResponse:
    context = context_of(request)
    await run_in_threadpool(_trust, context)  # refuse before receiving gigabytes
    writer = await blobs.receive(request, store_of(context),
                                 max_bytes=context.config.max_upload_bytes)
    try:
        row, new = await run_in_threadpool(_push, context, writer, who=who,
                                           remote=audit.remote_of(request))
    finally:
        writer.close()
    return JSONResponse(image_json(row), status_code=201 if new else 200)


@api.get("/images", tags=["images"], summary="Stored images, newest first")
def list_images(request: Request, _who: Reader, *,
                product: Annotated[str | None, Query(max_length=128)] = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JSONResponse:
    query = select(images).where(images.c.tenant == TENANT)
    if product is not None:
        query = query.where(images.c.product == product)
    query = query.order_by(images.c.created_ns.desc(), images.c.id).limit(limit)
    with context_of(request).engine.connect() as connection:
        rows = connection.execute(query).all()
    return JSONResponse({"images": [image_json(row) for row in rows]})


def _image_row(request: Request, image_id: str, *, tenant: str) -> Any:
    with context_of(request).engine.connect() as connection:
        row = connection.execute(select(images).where(
            images.c.id == image_id, images.c.tenant == tenant)).first()
    if row is None:
        raise not_found(f"image {image_id}")
    return row


@api.get("/images/{image_id}", tags=["images"], summary="One image")
def get_image(request: Request, image_id: ImageId, _who: Reader) -> JSONResponse:
    return JSONResponse(image_json(_image_row(request, image_id, tenant=TENANT)))


def _serve_image(request: Request, row: Any) -> Response:
    served = blobs.Representation(
        size=row.size, sha256=row.sha256, modified_seconds=row.created_ns // 10**9,
        filename=f"{row.product}-{row.version}-{row.build}.upd")
    return blobs.serve(request, path=store_of(context_of(request)).path_of(row.sha256),
                       served=served)


@api.get("/images/{image_id}/file", tags=["images"], response_class=Response,
         summary="Download an image (Range, If-Range, ETag)")
@api.head("/images/{image_id}/file", tags=["images"], response_class=Response)
def download_image(request: Request, image_id: ImageId, _who: Reader) -> Response:
    return _serve_image(request, _image_row(request, image_id, tenant=TENANT))


def _delete_row(context: AppContext, *, table: Table, condition: ColumnElement[bool],
                action: str, target: str, who: Operator, remote: str) -> bool:
    """Delete an image's or a file's row (audited), then its blob if nothing else names it."""
    store = store_of(context)
    with store.lock():
        with context.engine.begin() as connection:
            sha256 = connection.execute(select(table.c.sha256).where(condition)).scalar()
            if sha256 is None:
                return False
            if table is images:
                try:
                    catalog.remove_image_module(connection, target)
                except catalog.ModuleInUse as e:
                    raise ApiError(409, f"image {target} cannot be deleted: {e}") from None
            connection.execute(delete(table).where(condition))
            audit.record(connection, actor=who.actor, action=action, target=target,
                         remote=remote, details={"sha256": sha256})
        remove_if_unreferenced(context.engine, store, sha256=sha256)
    return True


@api.delete("/images/{image_id}", tags=["images"], status_code=204, response_class=Response,
            summary="Delete an image (its file goes when nothing else names the same bytes)")
def delete_image(request: Request, image_id: ImageId, who: ImagesWriter) -> Response:
    if not _delete_row(context_of(request), table=images,
                       condition=(images.c.id == image_id) & (images.c.tenant == TENANT),
                       action="image.delete", target=image_id, who=who,
                       remote=audit.remote_of(request)):
        raise not_found(f"image {image_id}")
    return Response(status_code=204)


# --- boot files ------------------------------------------------------------------------------


def _publish_file(context: AppContext, writer: BlobWriter, *, name: str, who: Operator,
                  remote: str) -> tuple[Any, int]:
    """(the file's row, 201 new | 200 replaced or unchanged)."""
    store = store_of(context)
    with store.lock():
        blob = writer.commit()
        try:
            with context.engine.begin() as connection:
                old = connection.execute(select(files).where(files.c.name == name)).first()
                values = {"sha256": blob.sha256, "size": blob.size, "created_ns": now_ns()}
                if old is None:
                    connection.execute(files.insert().values(name=name, **values))
                elif old.sha256 != blob.sha256:
                    connection.execute(update(files).where(files.c.name == name)
                                       .values(**values))
                if old is None or old.sha256 != blob.sha256:
                    audit.record(connection, actor=who.actor, action="file.put", target=name,
                                 remote=remote, details={"sha256": blob.sha256,
                                                         "size": blob.size})
                row = connection.execute(select(files).where(files.c.name == name)).one()
        except BaseException:
            if writer.created:
                store.remove(blob.sha256)
            raise
        if old is not None and old.sha256 != blob.sha256:
            remove_if_unreferenced(context.engine, store, sha256=old.sha256)
    return row, 201 if old is None else 200


@api.put("/files/{name}", tags=["files"], openapi_extra=_UPLOAD_BODY, status_code=201,
         summary="Store a boot file (kernel, ramdisk, …) under NAME: 201 new, 200 replaced")
async def put_file(request: Request, name: FileName, who: FilesWriter) -> JSONResponse:
    context = context_of(request)
    writer = await blobs.receive(request, store_of(context),
                                 max_bytes=context.config.max_upload_bytes)
    try:
        row, status = await run_in_threadpool(_publish_file, context, writer, name=name, who=who,
                                              remote=audit.remote_of(request))
    finally:
        writer.close()
    return JSONResponse(file_json(row), status_code=status)


@api.get("/files", tags=["files"], summary="Stored boot files, by name")
def list_files(request: Request, _who: Reader) -> JSONResponse:
    with context_of(request).engine.connect() as connection:
        rows = connection.execute(select(files).order_by(files.c.name)).all()
    return JSONResponse({"files": [file_json(row) for row in rows]})


def _serve_file(request: Request, name: str) -> Response:
    with context_of(request).engine.connect() as connection:
        row = connection.execute(select(files).where(files.c.name == name)).first()
    if row is None:
        raise not_found(f"file {name!r}")
    served = blobs.Representation(size=row.size, sha256=row.sha256,
                                  modified_seconds=row.created_ns // 10**9, filename=row.name)
    return blobs.serve(request, path=store_of(context_of(request)).path_of(row.sha256),
                       served=served)


@api.get("/files/{name}", tags=["files"], response_class=Response,
         summary="Download a boot file (Range, If-Range, ETag)")
@api.head("/files/{name}", tags=["files"], response_class=Response)
def download_file(request: Request, name: FileName, _who: Reader) -> Response:
    return _serve_file(request, name)


@api.delete("/files/{name}", tags=["files"], status_code=204, response_class=Response,
            summary="Delete a boot file")
def delete_file(request: Request, name: FileName, who: FilesWriter) -> Response:
    if not _delete_row(context_of(request), table=files, condition=files.c.name == name,
                       action="file.delete", target=name, who=who,
                       remote=audit.remote_of(request)):
        raise not_found(f"file {name!r}")
    return Response(status_code=204)


# --- the factory line's downloads ------------------------------------------------------------


@line_downloads.get("/files/{name}", response_class=Response,
                    summary="A boot file, for the line's iPXE script and manufData")
@line_downloads.head("/files/{name}", response_class=Response)
def line_file(request: Request, profile: ProfileName, name: FileName) -> Response:
    line_for(request, profile)
    return _serve_file(request, name)


@line_downloads.get("/images/{image_id}.upd", response_class=Response,
                    summary="An image, for manufacture (resumable with Range)")
@line_downloads.head("/images/{image_id}.upd", response_class=Response)
def line_image(request: Request, profile: ProfileName, image_id: ImageId) -> Response:
    line = line_for(request, profile)
    return _serve_image(request, _image_row(request, image_id, tenant=line.tenant))


router.include_router(api)
router.include_router(line_downloads)
