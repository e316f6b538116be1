"""The ``cli`` fixture: run ``switchboard`` commands against the session's real api."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from cli.main import app


@pytest.fixture
def cli(api_url: str, tmp_path: Path) -> Any:
    runner = CliRunner()
    env = {"SWITCHBOARD_PUBLIC_BASE_URL": api_url, "SWITCHBOARD_DATA_DIR": str(tmp_path)}

    async def invoke(*args: str) -> Result:
        # The api serves from this test's event loop; the CLI's blocking calls need a thread.
        return await asyncio.to_thread(runner.invoke, app, list(args), env=env)

    return invoke
