"""What ``switchboard dev`` tells the other commands about its stack (``DATA_DIR/dev.json``).

``send`` and ``demo`` sign as the demo partner with it; ``dev`` itself keeps the play endpoint's
id and secret there, so the next run reuses the endpoint. Reading it needs no development
package, so these commands work from the production image too.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from core.settings import Settings

__all__ = ["DEMO_MERCHANT", "DEMO_PARTNER", "DevState", "load_dev_state", "save_dev_state"]

DEMO_PARTNER = "demo"
DEMO_MERCHANT = "merchant_demo"
STATE_FILE = "dev.json"


@dataclass(frozen=True)
class DevState:
    """The demo tenants of the last ``switchboard dev`` and its play endpoint, once registered."""

    api_url: str
    partner_id: str
    partner_secret: str
    merchant_id: str
    play_endpoint_id: str | None = None
    play_endpoint_secret: str | None = None
    play_url: str | None = None


def load_dev_state(settings: Settings) -> DevState | None:
    """The state file the last ``switchboard dev`` wrote, if any (unknown keys are ignored)."""
    path = settings.data_dir / STATE_FILE
    if not path.exists():
        return None
    known = {field.name for field in dataclasses.fields(DevState)}
    return DevState(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})


def save_dev_state(settings: Settings, state: DevState) -> None:
    (settings.data_dir / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state), indent=2))
