"""What every ``/v1`` router depends on: the request's pool (and the dashboard's read pool) and
settings, the API-key scopes, the one-value query rule, and the problems those can answer.
Routers import these from here."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from temporalio.client import Client

from api.auth import Operator, require
from api.problems import ANY_REQUEST, problems
from core.replica import ReadPool
from core.settings import Settings

__all__ = [
    "OPERATOR_PROBLEMS",
    "Admin",
    "AdminOperator",
    "Config",
    "Pool",
    "Read",
    "Reads",
    "Replay",
    "ReplayOperator",
    "Temporal",
    "single_valued_query",
]


async def single_valued_query(request: Request) -> None:
    """Refuse a query parameter given more than once (``?since=a&since=b``): every operator
    query parameter holds one value, and silently taking one of two is a guess (422)."""
    keys = [key for key, _ in request.query_params.multi_items()]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise RequestValidationError(
            [
                {"loc": ("query", key), "msg": "is given more than once", "type": "repeated"}
                for key in repeated
            ]
        )


OPERATOR_PROBLEMS = problems(
    400, 401, 403, 422, *ANY_REQUEST, why={400: "The body is not UTF-8 JSON text."}
)
"""What every ``/v1`` route can answer: no or a bad key, a missing scope, an invalid request."""

Read = Depends(require("read"))
Replay = Depends(require("replay"))
ReplayOperator = Annotated[Operator, Replay]
Admin = Depends(require("admin"))
AdminOperator = Annotated[Operator, Admin]


# Async so FastAPI does not hand them to its thread pool on every request.
async def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def _reads(request: Request) -> ReadPool:
    reads: ReadPool = request.app.state.reads
    return reads


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _temporal(request: Request) -> Client:
    client: Client = request.app.state.temporal
    return client


Pool = Annotated[asyncpg.Pool, Depends(_pool)]
Reads = Annotated[ReadPool, Depends(_reads)]
"""The dashboard's reads (the read replica's pool when one is set): never for a decision."""
Config = Annotated[Settings, Depends(_settings)]
Temporal = Annotated[Client, Depends(_temporal)]
"""The api's Temporal client (connected lazily: only routes that talk to workflows need it)."""
