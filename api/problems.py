"""RFC 9457 ``application/problem+json`` responses for every error the api returns.

:func:`problems` declares them on routes, so the OpenAPI document lists every status a route
answers with the :class:`~api.schemas.Problem` schema; :func:`install_problem_handlers` renders
them and puts that schema in the document.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route

from api.schemas import Problem
from core.errors import IngressError, OperatorError

__all__ = ["ANY_REQUEST", "PROBLEM_JSON", "install_problem_handlers", "problem", "problems"]

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("switchboard.api")

ANY_REQUEST = (408, 413, 431, 503)
"""What any route can answer before or beside its own logic: a head or body too slow (408), a
body too large (413), a head too large (431) (all :mod:`api.limits`), too many connections or a
backing service that did not answer in time (503)."""

_WHY = {
    400: "The request is malformed.",
    401: "No API key, or an unknown or revoked one.",
    403: "The API key lacks the scope this route needs.",
    404: "Nothing with that id.",
    408: "The request head or body arrived too slowly.",
    409: "The request conflicts with the current state.",
    413: "The body is larger than the limit.",
    415: "The body's media type is not accepted.",
    422: "The request is invalid (the errors list each invalid value).",
    429: "Too many requests; see Retry-After.",
    431: "The request line and headers are too large.",
    503: "Unavailable right now (too many connections, or a backing service); see Retry-After.",
}
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def problems(*statuses: int, why: Mapping[int, str] | None = None) -> dict[int | str, Any]:
    """The ``responses=`` of a route or router answering ``statuses`` with problems; ``why``
    describes what a status means on this route, where the generic description is not enough."""
    why = why or {}
    return {
        status: {
            "description": why.get(status) or _WHY.get(status) or _title(status),
            "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}},
        }
        for status in statuses
    }


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
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
        return problem(
            error.status,
            _title(error.status),
            error.detail,
            type_=error.problem_type,
            headers=headers,
        )

    async def validation_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        errors = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(part) for part in first["loc"])
        return problem(422, "Invalid request", f"{where}: {first['msg']}", errors=errors)

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, HTTPException)
        headers = dict(error.headers or {})
        if error.status_code == 405:
            # Starlette names only the methods of the first route on the path; each method of
            # a path is a route of its own here.
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return problem(
            error.status_code, _title(error.status_code), str(error.detail), headers=headers
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
    app.openapi = _with_problem_schema(app.openapi)  # type: ignore[method-assign]


def _with_problem_schema(build: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """FastAPI's document builder, plus the Problem schema that :func:`problems` refers to."""

    def openapi() -> dict[str, Any]:
        document = build()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        if "Problem" not in schemas:
            problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(problem_schema.pop("$defs", {}))
            schemas["Problem"] = problem_schema
        return document

    return openapi


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods |= route.methods
    return sorted(methods)


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
