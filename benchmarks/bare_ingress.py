"""Baseline for the ingress: a bare FastAPI app that only verifies the signature and answers 202.

It shares nothing with Switchboard's api but :func:`core.signing.verify`, and is served with the
same uvicorn options as ``switchboard api`` (uvloop, httptools, no websockets, no log config;
access records fall below the log level, as in the api). So the ingress figures divided by this
app's are the cost of what Switchboard adds: partner lookup, rate limit, envelope validation
and the durable inbox write.

Run as ``python -m benchmarks.bare_ingress --port N`` with the partner's ``whsec_`` secret in
``BENCH_BARE_SECRET``.
"""

from __future__ import annotations

import argparse
import os
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from api.app import SERVER_OPTIONS
from core.errors import InvalidSignature, StaleTimestamp
from core.signing import parse_secret, verify

__all__ = ["create_bare_app"]

SECRET_ENV = "BENCH_BARE_SECRET"


def create_bare_app(secret: str) -> FastAPI:
    """The baseline app: ``POST /webhooks/{partner_id}`` verifies and returns 202."""
    keys = (parse_secret(secret),)
    app = FastAPI()

    @app.post("/webhooks/{partner_id}", status_code=202)
    async def receive(partner_id: str, request: Request) -> Response:
        body = await request.body()
        try:
            verified = verify(keys, request.headers, body, now=time.time())
        except (InvalidSignature, StaleTimestamp):
            return Response(status_code=401)
        return JSONResponse({"webhook_id": verified.webhook_id}, status_code=202)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    uvicorn.run(
        create_bare_app(os.environ[SECRET_ENV]),
        host=args.host,
        port=args.port,
        **SERVER_OPTIONS,
    )


if __name__ == "__main__":
    main()
