"""Email rendering and sending: receipts to customers, sale notices and operational notices
(an endpoint was disabled) to merchants.

Each email is rendered from ``activities/templates/{name}.subject.txt``, ``{name}.txt`` (the
plain-text part) and ``{name}.html``, and sent over SMTP. The ``Message-ID`` derives from the
delivery id, so a resend after a crash is recognisable as the same message.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

import aiosmtplib
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

__all__ = ["MailOutcome", "Mailer", "format_amount"]

# Currencies whose minor unit is not a hundredth (ISO 4217).
_MINOR_DIGITS = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "JOD": 3}


def format_amount(minor: int, currency: str) -> str:
    """``1050, "EUR"`` → ``"10.50 EUR"``: money is integer minor units until it is shown."""
    digits = _MINOR_DIGITS.get(currency.upper(), 2)
    if digits == 0:
        return f"{minor} {currency}"
    sign = "-" if minor < 0 else ""
    whole, part = divmod(abs(minor), 10**digits)
    return f"{sign}{whole}.{part:0{digits}d} {currency}"


@dataclass(frozen=True)
class MailOutcome:
    """How the SMTP server answered; ``permanent`` failures are not retried."""

    delivered: bool
    code: int | None = None
    error: str | None = None
    permanent: bool = False


class Mailer:
    """Renders templated emails and hands them to an SMTP server."""

    def __init__(self, host: str, port: int, sender: str, timeout: float) -> None:
        self._host = host
        self._port = port
        self._sender = sender
        self._timeout = timeout
        self._templates = Environment(
            loader=PackageLoader("activities", "templates"),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
        )

    def render(
        self, template: str, recipient: str, message_id: str, context: dict[str, Any]
    ) -> EmailMessage:
        """The message ``template`` renders for ``recipient``, with text and HTML parts."""
        message = EmailMessage()
        subject = self._templates.get_template(f"{template}.subject.txt").render(context)
        message["Subject"] = subject.strip()
        message["From"] = self._sender
        message["To"] = recipient
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = f"<{message_id}@switchboard>"
        message.set_content(self._templates.get_template(f"{template}.txt").render(context))
        message.add_alternative(
            self._templates.get_template(f"{template}.html").render(context), subtype="html"
        )
        return message

    async def send(self, message: EmailMessage) -> MailOutcome:
        """Send one message; SMTP 5xx answers are permanent, everything else is retryable."""
        try:
            await aiosmtplib.send(
                message, hostname=self._host, port=self._port, timeout=self._timeout
            )
        except aiosmtplib.SMTPResponseException as error:
            return MailOutcome(
                delivered=False,
                code=error.code,
                error=f"SMTP {error.code}: {error.message}",
                permanent=500 <= error.code < 600,
            )
        except aiosmtplib.SMTPRecipientsRefused as error:
            codes = [refused.code for refused in error.recipients]
            return MailOutcome(
                delivered=False,
                code=max(codes, default=None),
                error=f"recipient refused: {error}",
                permanent=bool(codes) and all(500 <= code < 600 for code in codes),
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            return MailOutcome(delivered=False, error=f"{type(error).__name__}: {error}")
        return MailOutcome(delivered=True, code=250)
