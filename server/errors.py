"""Errors answered as JSON: `{"detail": "...", "problems": [...]}` with a 4xx status."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError


class ApiError(Exception):
    def __init__(self, status: int, detail: str, *, problems: Sequence[str] = (),
                 headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.problems = tuple(problems)
        self.headers = headers or {}


async def api_error_handler(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    body: dict[str, object] = {"detail": error.detail}
    if error.problems:
        body["problems"] = list(error.problems)
    return JSONResponse(body, status_code=error.status, headers=error.headers)


async def data_error_handler(_request: Request, error: Exception) -> JSONResponse:
    """A value the database refuses (too long for its column, out of range, a NUL character
    on PostgreSQL) came from the request: 422, and its transaction was rolled back."""
    assert isinstance(error, DataError)
    reason = str(error.orig).strip().splitlines()[0] if error.orig is not None else str(error)
    return JSONResponse({"detail": f"a value does not fit the database: {reason}"},
                        status_code=422)


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found")
