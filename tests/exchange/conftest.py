"""Exchange workflow tests run their SLA timers on virtual time: a time-skipping server of each
test's own (it starts in a fraction of a second), so no workflow a test leaves behind can hold
the next test's clock back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from tests.support import time_skipping_server


@pytest_asyncio.fixture
async def time_skipping() -> AsyncIterator[WorkflowEnvironment]:
    async with time_skipping_server() as env:
        yield env
