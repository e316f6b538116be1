"""The development SMTP sink: accepts every email and keeps it in a Maildir to look at later.

``switchboard dev`` runs it (so receipts and sale notices have somewhere to go) and
``switchboard mail`` lists what it caught; the tests use it as their real SMTP server. Built on
``aiosmtpd``; the Maildir is the standard library's :mod:`mailbox` format, so any mail client
can open it too.
"""

from __future__ import annotations

import mailbox
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from core.settings import Settings

__all__ = ["CaughtMail", "MailSink", "maildir", "read_maildir"]


@dataclass(frozen=True)
class CaughtMail:
    """One caught email, as the sink's readers show it."""

    key: str
    message_id: str
    sender: str
    to: str
    subject: str
    date: str
    text: str
    html: str | None


class _Keeper:
    """aiosmtpd handler: every accepted message goes into the Maildir."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content
        assert isinstance(content, bytes)
        mailbox.Maildir(self.maildir, create=True).add(content)
        return "250 Message accepted for delivery"


def maildir(settings: Settings) -> Path:
    """Where ``switchboard dev``'s SMTP sink keeps what it catches."""
    return settings.data_dir / "mail"


class MailSink:
    """An SMTP server on ``host:port`` that stores what it receives in ``maildir``."""

    def __init__(self, maildir: Path, host: str = "127.0.0.1", port: int = 58025) -> None:
        self.maildir = maildir
        self.host = host
        self.port = port
        self._controller = Controller(_Keeper(maildir), hostname=host, port=port)

    def start(self) -> MailSink:
        # mailbox.Maildir creates its folders only when the directory itself does not exist.
        for folder in ("tmp", "new", "cur"):
            (self.maildir / folder).mkdir(parents=True, exist_ok=True)
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> MailSink:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()

    def messages(self) -> list[CaughtMail]:
        return read_maildir(self.maildir)


def read_maildir(maildir: Path) -> list[CaughtMail]:
    """Every message in ``maildir``, oldest first."""
    if not maildir.exists():
        return []
    box = mailbox.Maildir(maildir, create=False)
    caught = []
    # Maildir keys start with the delivery time, so they sort oldest first.
    for key in sorted(box.keys()):
        with box.get_file(key) as handle:
            message = message_from_bytes(handle.read(), policy=policy.default)
        assert isinstance(message, EmailMessage)
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        caught.append(
            CaughtMail(
                key=key,
                message_id=str(message["Message-ID"] or ""),
                sender=str(message["From"] or ""),
                to=str(message["To"] or ""),
                subject=str(message["Subject"] or ""),
                date=str(message["Date"] or ""),
                text=text.get_content() if text is not None else "",
                html=html.get_content() if html is not None else None,
            )
        )
    return caught
