"""What every operator command shares: the operator-API client and how results are printed.

Operator commands are clients of the operator API at ``SWITCHBOARD_PUBLIC_BASE_URL``; each
prints a table (or a sentence) for people, or JSON with ``--json``, and exits non-zero with the
API's problem detail when a call fails.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console

from core.settings import Settings

__all__ = [
    "Json",
    "call",
    "console",
    "dev_only",
    "emit",
    "err",
    "fail",
    "operator_client",
    "problem_line",
]

console = Console(soft_wrap=True)
err = Console(stderr=True)

Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def emit(as_json: bool, data: Any, human: Any = None) -> None:
    """Print ``data`` as JSON, or ``human`` (a table or a sentence) for people."""
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        console.print(human if human is not None else data)


def fail(message: str, as_json: bool, code: int = 1) -> NoReturn:
    """Report an error the same way output is reported, then exit with ``code``."""
    if as_json:
        typer.echo(json.dumps({"error": message}))
    else:
        err.print(f"[red]{message}[/red]")
    raise typer.Exit(code)


def dev_only(command: str, as_json: bool) -> None:
    """Fail with a clear message unless the development stack's servers are installed.

    The production image leaves them out (it installs requirements-runtime.lock), so commands
    that run or read the dev stack import :mod:`devstack` only after this check.
    """
    import devstack

    if missing := devstack.missing_servers():
        fail(
            f"`switchboard {command}` needs the development stack, whose packages are not"
            f" installed here: {', '.join(missing)} (the production image leaves them out)."
            " From a source checkout, run `./run switchboard ...`: it installs requirements.lock.",
            as_json,
            code=2,
        )


def operator_client(settings: Settings) -> httpx.Client:
    """An HTTP client for the operator API, authenticated with the admin key from settings."""
    return httpx.Client(
        base_url=settings.public_base_url,
        headers={"authorization": f"Bearer {settings.admin_api_key.get_secret_value()}"},
        timeout=30,
    )


def call(as_json: bool, method: str, path: str, **kwargs: Any) -> Any:
    """One operator-API call; its JSON answer, or :func:`fail` with the problem detail."""
    settings = Settings()
    try:
        with operator_client(settings) as client:
            response = client.request(method, path, **kwargs)
    except httpx.HTTPError as error:
        fail(f"cannot reach the api at {settings.public_base_url}: {error}", as_json)
    if response.status_code >= 400:
        fail(problem_line(response), as_json)
    if response.status_code == 204:
        return None
    return response.json()


def problem_line(response: httpx.Response) -> str:
    """``409 insufficient-funds: <detail>``: the status, the problem's type when it has one of
    its own (``/problems/<name>``), and its detail."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return f"{response.status_code}: {response.reason_phrase}"
    kind = str(body.get("type") or "")
    named = f" {kind.rsplit('/', 1)[-1]}" if kind.startswith("/problems/") else ""
    return f"{response.status_code}{named}: {body.get('detail') or body.get('title')}"
