"""The ``switchboard`` operator commands against the real api, human and ``--json`` output."""

from __future__ import annotations

import json
import uuid
from typing import Any

from typer.testing import CliRunner

from cli.main import app
from core.settings import Settings


def test_help_lists_the_commands() -> None:
    """``switchboard --help`` names every command."""
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("dev", "api", "worker", "migrate", "partners", "send", "demo", "trace"):
        assert command in result.output


def test_dev_help_lists_every_setting() -> None:
    """``switchboard dev --help`` documents every SWITCHBOARD_* setting."""
    result = CliRunner().invoke(app, ["dev", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in Settings.model_fields:
        assert f"SWITCHBOARD_{name.upper()}" in result.output


async def test_partner_send_trace_round_trip(cli: Any) -> None:
    """Add a partner, send a signed webhook with its secret, and trace it, all as JSON."""
    partner_id = f"cli-{uuid.uuid4().hex[:8]}"
    added = await cli("partners", "add", partner_id, "--json")
    assert added.exit_code == 0, added.output
    secret = json.loads(added.output)["secret"]
    assert secret.startswith("whsec_")
    sent = await cli(
        "send",
        "payment.succeeded",
        "--merchant",
        "m_cli",
        "--amount",
        "1250",
        "--partner",
        partner_id,
        "--secret",
        secret,
        "--json",
    )
    assert sent.exit_code == 0, sent.output
    accepted = json.loads(sent.output)
    assert accepted["status"] == 202
    traced = await cli("trace", accepted["event_id"], "--json")
    assert traced.exit_code == 0, traced.output
    assert json.loads(traced.output)["partner_id"] == partner_id
    human = await cli("trace", accepted["event_id"])
    assert "received" in human.output


async def test_duplicate_partner_is_a_clean_error(cli: Any) -> None:
    """Creating a partner twice exits 1 with the API's reason, in JSON too."""
    partner_id = f"cli-{uuid.uuid4().hex[:8]}"
    assert (await cli("partners", "add", partner_id)).exit_code == 0
    again = await cli("partners", "add", partner_id, "--json")
    assert again.exit_code == 1
    assert json.loads(again.output) == {"error": f"409: partner '{partner_id}' already exists"}


async def test_replay_defaults_to_a_dry_run(cli: Any) -> None:
    """``dead-letters replay`` without ``--execute`` only counts."""
    result = await cli("dead-letters", "replay", "--partner", "nobody", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["dry_run"] is True


def test_unreachable_api_is_a_clean_error(tmp_path: Any) -> None:
    """With no api listening, commands say where they tried and exit 1."""
    result = CliRunner().invoke(
        app,
        ["alerts", "list", "--json"],
        env={
            "SWITCHBOARD_PUBLIC_BASE_URL": "http://127.0.0.1:9",
            "SWITCHBOARD_DATA_DIR": str(tmp_path),
        },
    )
    assert result.exit_code == 1
    assert "cannot reach the api at http://127.0.0.1:9" in json.loads(result.output)["error"]


async def test_merchant_partner_and_key_commands(cli: Any) -> None:
    """Create a partner and a merchant linked to it, change the merchant, unlink and link again,
    then create, list and revoke an API key: every step as JSON."""
    partner_id = f"cli-{uuid.uuid4().hex[:8]}"
    merchant_id = f"m-cli-{uuid.uuid4().hex[:8]}"
    assert (await cli("partners", "add", partner_id, "--auto-onboard", "--json")).exit_code == 0
    listed = json.loads((await cli("partners", "list", "--json")).output)
    assert [p["auto_onboard_merchants"] for p in listed if p["id"] == partner_id] == [True]
    updated_partner = await cli(
        "partners", "update", partner_id, "--no-auto-onboard", "--rate-limit", "9", "--json"
    )
    assert json.loads(updated_partner.output)["auto_onboard_merchants"] is False
    assert json.loads(updated_partner.output)["rate_limit_per_second"] == 9
    added = await cli(
        "merchants",
        "add",
        merchant_id,
        "--email",
        "o@shop.example",
        "--partner",
        partner_id,
        "--json",
    )
    assert added.exit_code == 0, added.output
    assert json.loads(added.output)["partners"] == [partner_id]
    again = await cli("merchants", "add", merchant_id, "--json")
    assert again.exit_code != 0 and "409" in again.output
    updated = await cli("merchants", "update", merchant_id, "--name", "Shop", "--json")
    assert json.loads(updated.output)["email"] == "o@shop.example"
    assert json.loads(updated.output)["name"] == "Shop"
    assert (await cli("merchants", "unlink", merchant_id, partner_id, "--json")).exit_code == 0
    shown = json.loads((await cli("merchants", "show", merchant_id, "--json")).output)
    assert shown["partners"] == []
    linked = json.loads((await cli("merchants", "link", merchant_id, partner_id, "--json")).output)
    assert linked["created"] is True
    key = json.loads((await cli("api-keys", "add", "cli-ops", "--scope", "read", "--json")).output)
    keys = json.loads((await cli("api-keys", "list", "--json")).output)
    assert key["id"] in [k["id"] for k in keys]
    revoked = json.loads((await cli("api-keys", "revoke", str(key["id"]), "--json")).output)
    assert revoked["revoked_at"] is not None
