"""The formats of identifiers and email addresses Switchboard accepts, at every edge.

One definition each, used by the partner event models, the operator API and the database
checks, so that anything created through one door can be addressed through every other: an id
never contains a ``/`` (it is a path segment in the operator API), a NUL, spaces or anything a
log line or a URL would have to escape.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

__all__ = [
    "EMAIL_ADDRESS_FORMAT",
    "IDENTIFIER_FORMAT",
    "PARTNER_ID_FORMAT",
    "EmailAddress",
    "Identifier",
    "PartnerId",
]

# Merchant, payment, refund and other entity ids: 1-128 of letters, digits, '_', '.', ':', '-',
# starting with a letter or digit. Migration 0003 checks merchant ids with the same expression.
IDENTIFIER_FORMAT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
# Partner ids are shorter and have no ':' (they are part of Temporal workflow ids with ':').
PARTNER_ID_FORMAT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# One address, no display name, no list: the HTML standard's "valid e-mail address" grammar
# (https://html.spec.whatwg.org/#valid-e-mail-address), which is what browsers accept.
EMAIL_ADDRESS_FORMAT = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)

Identifier = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=f"^{IDENTIFIER_FORMAT.pattern}$",
        description="1-128 letters, digits, '_', '.', ':' or '-', starting with a letter or digit.",
    ),
]
PartnerId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=f"^{PARTNER_ID_FORMAT.pattern}$",
        description="1-64 letters, digits, '_', '.' or '-', starting with a letter or digit.",
    ),
]
EmailAddress = Annotated[
    str,
    Field(
        max_length=254,
        pattern=f"^{EMAIL_ADDRESS_FORMAT.pattern}$",
        description="One email address, without a display name.",
    ),
]
