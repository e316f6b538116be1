"""Standard Webhooks signing and verification, implemented here rather than borrowed.

This module owns the wire format of the three Standard Webhooks headers and nothing else: it
reads no clock (``now`` is always passed in), does no I/O and keeps no state.

* ``webhook-id`` — the message id: 1 to 255 visible ASCII characters (``!`` to ``~``).
* ``webhook-timestamp`` — integer unix seconds, ASCII digits only, at most 12 of them.
* ``webhook-signature`` — space-delimited ``<version>,<signature>`` entries. A ``v1`` entry is
  the base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` under a secret's decoded key; entries of
  other versions (``v1a,...``, ``v2,...``) are ignored.
* Secrets are ``whsec_<base64>``; the prefix is optional on input and the decoded bytes are the
  HMAC key. :func:`parse_secret` turns one into a key, once, when configuration is loaded.

Guarantees:

* :func:`verify` raises only :class:`~core.errors.InvalidSignature` or
  :class:`~core.errors.StaleTimestamp`, whatever it is given, and its work is bounded by the size
  of the body: one HMAC per secret, at most 50 signature entries of an 8 KiB header.
* Signatures are compared with :func:`hmac.compare_digest` only.
* The body is handled as bytes throughout and never decoded.
* What :func:`sign` and :func:`sign_headers` produce, :func:`verify` accepts (given a ``now``
  within the tolerance): they refuse ids and timestamps that :func:`verify` would refuse.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from secrets import token_bytes

from core.errors import InvalidSignature, StaleTimestamp

__all__ = [
    "DEFAULT_TOLERANCE",
    "SECRET_PREFIX",
    "VerifiedWebhook",
    "generate_secret",
    "parse_secret",
    "sign",
    "sign_headers",
    "signature_header",
    "verify",
]

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300
"""Seconds a ``webhook-timestamp`` may be away from ``now``, in the past or the future."""

MAX_ID_LENGTH = 255
MAX_TIMESTAMP_DIGITS = 12
MAX_SIGNATURE_HEADER_LENGTH = 8 * 1024
MAX_SIGNATURE_ENTRIES = 50

_ID_HEADER = "webhook-id"
_TIMESTAMP_HEADER = "webhook-timestamp"
_SIGNATURE_HEADER = "webhook-signature"
_HEADER_NAMES = frozenset((_ID_HEADER, _TIMESTAMP_HEADER, _SIGNATURE_HEADER))
_V1_BYTES = hashlib.sha256().digest_size  # 32
_V1_BASE64_CHARS = 44  # len(base64 of 32 bytes), padding included


@dataclass(frozen=True)
class VerifiedWebhook:
    """The authenticated identity of a webhook that passed :func:`verify`."""

    webhook_id: str
    timestamp: int


def generate_secret() -> str:
    """Return a new secret: ``whsec_`` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(token_bytes(32)).decode("ascii")


def parse_secret(secret: str) -> bytes:
    """Decode ``whsec_<base64>`` (prefix optional) into the HMAC key it stands for.

    Surrounding whitespace is ignored and missing base64 padding is tolerated. Raises
    :class:`ValueError` if what remains is empty, is not base64 or decodes to no bytes.
    """
    if not isinstance(secret, str):
        raise ValueError("webhook secret must be a string")
    text = secret.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise ValueError("webhook secret is not valid base64") from None
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``v1,<base64>`` signature of ``body`` sent as ``msg_id`` at ``timestamp``.

    ``secret`` is a ``whsec_...`` string or an already parsed key. Raises :class:`ValueError`
    for a bad secret, an id :func:`verify` would refuse or a negative timestamp.
    """
    key = _key(secret)
    if not _valid_id(msg_id):
        raise ValueError(f"webhook id must be 1-{MAX_ID_LENGTH} visible ASCII characters")
    return _v1(key, _signed_content(msg_id, _timestamp_text(timestamp), body))


def signature_header(
    secrets: Sequence[str | bytes], msg_id: str, timestamp: int, body: bytes
) -> str:
    """Return a ``webhook-signature`` value with one ``v1`` entry per secret (for rotation)."""
    keys = [_key(secret) for secret in secrets]
    if not keys:
        raise ValueError("at least one secret is needed to sign")
    if len(keys) > MAX_SIGNATURE_ENTRIES:
        raise ValueError(f"at most {MAX_SIGNATURE_ENTRIES} secrets can sign one webhook")
    if not _valid_id(msg_id):
        raise ValueError(f"webhook id must be 1-{MAX_ID_LENGTH} visible ASCII characters")
    content = _signed_content(msg_id, _timestamp_text(timestamp), body)
    return " ".join(_v1(key, content) for key in keys)


def sign_headers(
    secrets: str | bytes | Sequence[str | bytes], msg_id: str, body: bytes, *, now: int
) -> dict[str, str]:
    """Return the three Standard Webhooks headers for sending ``body`` as ``msg_id`` at ``now``.

    ``secrets`` is one secret or several (each signs; during rotation send both old and new).
    """
    many = [secrets] if isinstance(secrets, str | bytes) else list(secrets)
    return {
        _ID_HEADER: msg_id,
        _TIMESTAMP_HEADER: _timestamp_text(now),
        _SIGNATURE_HEADER: signature_header(many, msg_id, now, body),
    }


def verify(
    secrets: Sequence[bytes],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: int = DEFAULT_TOLERANCE,
) -> VerifiedWebhook:
    """Check that ``body`` and ``headers`` were signed by a holder of one of ``secrets``.

    ``secrets`` are keys from :func:`parse_secret`; several may be active during a rotation, and
    the webhook is accepted if any ``v1`` signature in its header matches any of them. Header
    names are looked up case-insensitively; ``now`` is the current unix time, in seconds.

    Guarantees:

    * Only :class:`~core.errors.InvalidSignature` or :class:`~core.errors.StaleTimestamp` is ever
      raised, for any argument, including misuse (a ``headers`` that isn't a mapping, a ``body``
      that isn't bytes, no usable secret): such calls are refused, never let through.
    * :class:`~core.errors.StaleTimestamp` is raised only for a webhook whose signature is
      valid but whose timestamp is more than ``tolerance`` seconds before or after ``now``
      (a replay or a skewed clock). Everything else that fails — missing, malformed, ambiguous
      or non-matching headers — is :class:`~core.errors.InvalidSignature` with a short detail
      that never echoes what the sender sent. So an unauthenticated caller can't produce a
      :class:`~core.errors.StaleTimestamp`, and one is worth alerting on.
    * The work is bounded: the headers are validated before any HMAC is computed, a signature
      header over 8 KiB or with more than 50 entries is refused outright, and the HMAC of the
      body is computed once per secret, whatever the number of entries.
    * Signatures are compared in constant time with :func:`hmac.compare_digest`.

    Trade-offs:

    * The signed content is ``{id}.{timestamp}.{body}`` with the timestamp exactly as sent; a
      sender padding it with leading zeros must have signed it that way.
    * A malformed ``v1`` entry refuses the whole header, even next to a valid one; entries of
      other versions are ignored, so a header with no ``v1`` entry is refused.
    * A header name given twice in different cases with different values is refused.
    * Ids may contain ``.`` as the specification allows, so ``{id}.{timestamp}.{body}`` is not
      an unambiguous encoding in general; dedupe on ``webhook-id`` and the body to be safe.
    * Replays within the tolerance are not detected here: dedupe on ``webhook-id``.

    Returns the authenticated id and timestamp; raises
    :class:`~core.errors.InvalidSignature` or :class:`~core.errors.StaleTimestamp`.
    """
    msg_id, ts_text, sig_text = _find_headers(headers)
    if not _valid_id(msg_id):
        raise InvalidSignature("malformed webhook-id header")
    if not (len(ts_text) <= MAX_TIMESTAMP_DIGITS and ts_text.isascii() and ts_text.isdigit()):
        raise InvalidSignature("malformed webhook-timestamp header")
    expected = _parse_signatures(sig_text)
    if not isinstance(body, bytes | bytearray | memoryview):
        raise InvalidSignature("webhook body must be bytes")
    if isinstance(secrets, str | bytes) or not isinstance(secrets, Sequence):
        raise InvalidSignature("no verification secret configured")

    content = _signed_content(msg_id, ts_text, body)
    usable = False
    for key in secrets:
        if not (isinstance(key, bytes) and key):
            continue
        usable = True
        computed = hmac.digest(key, content, "sha256")
        for candidate in expected:
            if hmac.compare_digest(computed, candidate):
                return _in_tolerance(msg_id, int(ts_text), now, tolerance)
    if not usable:
        raise InvalidSignature("no verification secret configured")
    raise InvalidSignature("no matching signature")


def _in_tolerance(msg_id: str, timestamp: int, now: float, tolerance: int) -> VerifiedWebhook:
    if not (isinstance(now, int | float) and isinstance(tolerance, int)):
        raise StaleTimestamp("cannot check webhook-timestamp: no usable clock or tolerance")
    skew = timestamp - now
    if not abs(skew) <= tolerance:  # also refuses everything when ``now`` is NaN
        direction = "in the future" if skew > 0 else "in the past"
        raise StaleTimestamp(f"webhook-timestamp is {direction}, beyond {tolerance}s of tolerance")
    return VerifiedWebhook(webhook_id=msg_id, timestamp=timestamp)


def _find_headers(headers: Mapping[str, str]) -> tuple[str, str, str]:
    """Return the id, timestamp and signature header values, looked up case-insensitively."""
    if not isinstance(headers, Mapping):
        raise InvalidSignature("webhook headers must be a mapping")
    found: dict[str, str] = {}
    for name, value in headers.items():
        if not (isinstance(name, str) and name.isascii()):
            continue
        lowered = name.lower()
        if lowered not in _HEADER_NAMES:
            continue
        if not isinstance(value, str):
            raise InvalidSignature(f"malformed {lowered} header")
        if found.setdefault(lowered, value) != value:
            raise InvalidSignature(f"conflicting {lowered} headers")
    try:
        return found[_ID_HEADER], found[_TIMESTAMP_HEADER], found[_SIGNATURE_HEADER]
    except KeyError as missing:
        raise InvalidSignature(f"missing {missing.args[0]} header") from None


def _parse_signatures(header: str) -> list[bytes]:
    """Decode the ``v1`` entries of a ``webhook-signature`` value, ignoring other versions."""
    if len(header) > MAX_SIGNATURE_HEADER_LENGTH:
        raise InvalidSignature("webhook-signature header too long")
    entries = [entry for entry in header.split(" ") if entry]
    if len(entries) > MAX_SIGNATURE_ENTRIES:
        raise InvalidSignature("too many webhook-signature entries")
    decoded: list[bytes] = []
    for entry in entries:
        version, comma, encoded = entry.partition(",")
        if not (comma and version):
            raise InvalidSignature("malformed webhook-signature entry")
        if version != "v1":
            continue
        if len(encoded) != _V1_BASE64_CHARS:
            raise InvalidSignature("malformed v1 signature: wrong length")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except ValueError:  # binascii.Error, or non-ASCII text
            raise InvalidSignature("malformed v1 signature: not base64") from None
        if len(raw) != _V1_BYTES:
            raise InvalidSignature("malformed v1 signature: wrong length")
        decoded.append(raw)
    if not decoded:
        raise InvalidSignature("no v1 signature in webhook-signature header")
    return decoded


def _valid_id(msg_id: object) -> bool:
    return (
        isinstance(msg_id, str)
        and 0 < len(msg_id) <= MAX_ID_LENGTH
        and msg_id.isascii()
        and msg_id.isprintable()
        and " " not in msg_id
    )


def _timestamp_text(timestamp: int) -> str:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise ValueError("webhook timestamp must be an int of unix seconds")
    text = str(timestamp)
    if timestamp < 0 or len(text) > MAX_TIMESTAMP_DIGITS:
        raise ValueError(f"webhook timestamp must be 0 to {MAX_TIMESTAMP_DIGITS} digits")
    return text


def _signed_content(msg_id: str, timestamp: str, body: bytes | bytearray | memoryview) -> bytes:
    return f"{msg_id}.{timestamp}.".encode("ascii") + body


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, str):
        return parse_secret(secret)
    if isinstance(secret, bytes) and secret:
        return secret
    raise ValueError("a webhook key must be a whsec_ string or non-empty bytes")


def _v1(key: bytes, content: bytes) -> str:
    return "v1," + base64.b64encode(hmac.digest(key, content, "sha256")).decode("ascii")
