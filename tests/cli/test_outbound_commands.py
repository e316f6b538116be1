"""The outbound commands against the real api: endpoints, deliveries and the mail sink's inbox."""

from __future__ import annotations

import json
import mailbox
from email.message import EmailMessage
from pathlib import Path
from typing import Any


async def test_endpoint_lifecycle(cli: Any) -> None:
    """Add (prints id and secret), list, pause, resume, rotate, attempts, delete."""
    added = await cli("endpoints", "add", "m_cli_ep", "http://127.0.0.1:9/hooks", "--json")
    assert added.exit_code == 0, added.output
    created = json.loads(added.output)
    endpoint_id, secret = created["id"], created["secret"]
    assert endpoint_id.startswith("ep_") and secret.startswith("whsec_")
    human = await cli("endpoints", "add", "m_cli_ep", "http://127.0.0.1:9/other")
    assert "Secret   whsec_" in human.output

    listed = json.loads((await cli("endpoints", "list", "--merchant", "m_cli_ep", "--json")).output)
    assert {e["id"] for e in listed} >= {endpoint_id}
    paused = await cli("endpoints", "pause", endpoint_id)
    assert f"Endpoint {endpoint_id} is paused." in paused.output
    resumed = json.loads((await cli("endpoints", "resume", endpoint_id, "--json")).output)
    assert resumed["status"] == "active"
    rotated = json.loads(
        (await cli("endpoints", "rotate", endpoint_id, "--overlap-seconds", "60", "--json")).output
    )
    assert rotated["secret"] != secret
    attempts = await cli("endpoints", "attempts", endpoint_id, "--json")
    assert json.loads(attempts.output) == []
    deleted = await cli("endpoints", "delete", endpoint_id, "--json")
    assert json.loads(deleted.output).get("status") == "deleted", deleted.output
    gone = await cli("endpoints", "show", endpoint_id, "--json")
    assert gone.exit_code == 1
    assert "404" in json.loads(gone.output)["error"]


async def test_private_url_is_refused_with_the_reason(cli: Any) -> None:
    refused = await cli("endpoints", "add", "m_cli_ep", "http://169.254.169.254/latest", "--json")
    assert refused.exit_code == 1
    assert "private address" in json.loads(refused.output)["error"]


async def test_deliveries_replay_needs_a_selection(cli: Any) -> None:
    result = await cli("deliveries", "replay", "--json")
    assert result.exit_code == 2
    dry = await cli("deliveries", "replay", "--endpoint", "ep_none", "--json")
    assert json.loads(dry.output) == {
        "matched": 0,
        "replayed": 0,
        "dry_run": True,
        "event_ids": [],
    }


async def test_mail_lists_and_shows_what_the_sink_caught(cli: Any, tmp_path: Path) -> None:
    box = mailbox.Maildir(tmp_path / "mail", create=True)
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@x.example", "b@y.example", "Hello"
    message.set_content("Receipt body")
    box.add(message)
    listed = json.loads((await cli("mail", "list", "--json")).output)
    assert [(m["to"], m["subject"]) for m in listed] == [("b@y.example", "Hello")]
    shown = await cli("mail", "show", "1")
    assert "Subject: Hello" in shown.output and "Receipt body" in shown.output
    missing = await cli("mail", "show", "2", "--json")
    assert missing.exit_code == 1
