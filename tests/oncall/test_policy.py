"""The on-call policy file: the committed default is valid, and every kind of mistake is refused
at start with the line it is on (also through ``switchboard alerts check-config``)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from core.alert_policy import PolicyError, load_policy
from core.settings import Settings

GOOD = """
routes:
  - name: critical
    match: {severity: critical}
    escalation:
      - {after: 0s, notify: [slack]}
  - name: default
    escalation:
      - {after: 0s, notify: [slack]}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "alerting.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_committed_default_policy_is_valid() -> None:
    policy = load_policy(Settings.model_fields["alerting_policy"].default)
    labels = {"kind": "money_event_dead_lettered", "severity": "critical"}
    assert policy.route_for(labels).name == "critical"
    assert policy.route_for({"kind": "endpoint_failing", "severity": "warning"}).name == "endpoints"
    assert policy.route_for({"kind": "anything", "severity": "info"}).name == "default"


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (
            GOOD.replace(
                "after: 0s, notify: [slack]}\n  - name: default",
                "after: 10 minutes, notify: [slack]}\n  - name: default",
            ),
            6,
            "not a duration",
        ),
        (
            GOOD.replace(
                "notify: [slack]}\n  - name: default", "notify: [email]}\n  - name: default"
            ),
            6,
            "notify",
        ),
        (GOOD.replace("{severity: critical}", "{kind: no_such_kind}"), 4, "no alert kind"),
        (
            GOOD.replace(
                "    escalation:\n      - {after: 0s, notify: [slack]}\n  - name: default",
                "    escalaton: []\n  - name: default",
            ),
            3,
            "escalation",
        ),
        (GOOD + "inhibit:\n  - source: {kind: nope}\n    target: {}\n", 11, "no alert kind"),
        ("routes: [\n", 2, "not valid YAML"),
        (
            GOOD.replace(
                "  - name: default\n    escalation:",
                "  - name: default\n    match: {severity: info}\n    escalation:",
            ),
            3,
            "the last route",
        ),
    ],
)
def test_mistakes_are_refused_with_their_line(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as refused:
        load_policy(path)
    message = str(refused.value)
    assert message.startswith(f"{path}:{line}:"), message
    assert fragment in message


def test_check_config_names_the_file_and_line(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD)
    result = CliRunner().invoke(app, ["alerts", "check-config", str(good), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["routes"] == ["critical", "default"]
    bad = write(tmp_path, GOOD.replace("{severity: critical}", "{kind: no_such_kind}"))
    result = CliRunner().invoke(app, ["alerts", "check-config", str(bad)])
    assert result.exit_code != 0
    assert f"{bad}:4:" in result.output


def test_alert_kinds_are_listed_with_their_severity() -> None:
    result = CliRunner().invoke(app, ["alerts", "kinds", "--json"])
    assert result.exit_code == 0, result.output
    kinds = {k["name"]: k["severity"] for k in json.loads(result.output)}
    assert kinds["money_event_dead_lettered"] == "critical"
    assert kinds["unlinked_merchant"] == "error"
    assert "payment_failed" not in kinds  # a decline is a business event, not an incident
