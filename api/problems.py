"""RFC 9457 ``application/problem+json`` responses for every error the api returns."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from core.errors import IngressError, OperatorError

__all__ = ["install_problem_handlers", "problem"]

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("switchboard.api")


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem+json response."""
    body = {"type": type_, "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def install_problem_handlers(app: FastAPI) -> None:
    """Render our error tree, FastAPI validation errors and HTTP errors as problems."""

    async def ingress_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, IngressError)
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
        return problem(
            error.status, error.title, error.detail, type_=error.problem_type, headers=headers
        )

    async def operator_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, OperatorError)
        return problem(error.status, _title(error.status), error.detail)

    async def validation_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        errors = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(part) for part in first["loc"])
        return problem(422, "Invalid request", f"{where}: {first['msg']}", errors=errors)

    async def http_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, HTTPException)
        return problem(
            error.status_code,
            _title(error.status_code),
            str(error.detail),
            headers=dict(error.headers or {}),
        )

    async def unstorable_input(request: Request, error: Exception) -> JSONResponse:
        # Input that passed validation but Postgres cannot take (a NUL character, a number
        # beyond 64 bits, a date outside its range) is still the client's input: a 422, never a
        # 500. What the database said stays in our log, not in the answer.
        log.info("unstorable input on %s: %r", request.url.path, error)
        return problem(
            422,
            "Invalid request",
            "a value in the request cannot be stored or compared (a NUL character, a number "
            "beyond 64 bits, or a date out of range)",
        )

    async def timed_out(_: Request, error: Exception) -> JSONResponse:
        # Postgres statements and connections time out (core.db.connect_pool) rather than hang.
        return problem(
            503,
            "Service Unavailable",
            "a backing service did not answer in time; retry later",
            headers={"Retry-After": "5"},
        )

    app.add_exception_handler(IngressError, ingress_error)
    app.add_exception_handler(TimeoutError, timed_out)
    app.add_exception_handler(asyncpg.DataError, unstorable_input)
    app.add_exception_handler(OverflowError, unstorable_input)
    app.add_exception_handler(OperatorError, operator_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
