"""Tests of ``core.signing``: the Standard Webhooks vector, our rules, interop and fuzzing."""

from __future__ import annotations

import ast
import base64
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from standardwebhooks.webhooks import Webhook

from core import signing
from core.errors import InvalidSignature, StaleTimestamp
from core.signing import (
    VerifiedWebhook,
    generate_secret,
    parse_secret,
    sign,
    sign_headers,
    signature_header,
    verify,
)

# The example of the Standard Webhooks specification and its reference libraries.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TS = 1614265330
BODY = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
KEY = parse_secret(SECRET)
OTHER_KEY = parse_secret(generate_secret())


def vector_headers(signature: str = EXPECTED, ts: int | str = TS) -> dict[str, str]:
    return {"webhook-id": MSG_ID, "webhook-timestamp": str(ts), "webhook-signature": signature}


def random_v1() -> str:
    return "v1," + base64.b64encode(parse_secret(generate_secret())).decode()


# --- W1: the vector and the rules ---------------------------------------------------------------


def test_sign_reproduces_the_standard_webhooks_vector() -> None:
    """Signing the specification's example yields exactly its published signature."""
    assert sign(SECRET, MSG_ID, TS, BODY) == EXPECTED
    assert sign(KEY, MSG_ID, TS, BODY) == EXPECTED


def test_verify_accepts_the_vector_at_its_own_timestamp() -> None:
    """The specification's example verifies at now == its timestamp and reports id and time."""
    assert verify([KEY], vector_headers(), BODY, now=TS) == VerifiedWebhook(MSG_ID, TS)


def test_one_valid_signature_among_four_is_enough() -> None:
    """A header with one matching v1 entry among four is accepted, wherever it stands."""
    others = [random_v1() for _ in range(3)]
    for position in range(4):
        entries = [*others]
        entries.insert(position, EXPECTED)
        assert verify([KEY], vector_headers(" ".join(entries)), BODY, now=TS).webhook_id == MSG_ID


def test_other_signature_versions_are_ignored() -> None:
    """Entries of other versions such as v1a are skipped: alone they leave nothing to match."""
    v1a = "v1a," + EXPECTED.removeprefix("v1,")
    assert verify([KEY], vector_headers(f"{v1a} {EXPECTED} v2,whatever"), BODY, now=TS)
    with pytest.raises(InvalidSignature):
        verify([KEY], vector_headers(v1a), BODY, now=TS)


@pytest.mark.parametrize("offset", [-300, -299, 0, 299, 300])
def test_timestamps_within_tolerance_are_accepted(offset: int) -> None:
    """A timestamp up to 300 seconds before or after now is accepted."""
    assert verify([KEY], vector_headers(), BODY, now=TS + offset).timestamp == TS


@pytest.mark.parametrize(("offset", "word"), [(301, "past"), (-301, "future"), (10**6, "past")])
def test_timestamps_beyond_tolerance_are_stale(offset: int, word: str) -> None:
    """A validly signed timestamp 301 seconds or more from now, either way, is StaleTimestamp."""
    with pytest.raises(StaleTimestamp, match=word):
        verify([KEY], vector_headers(), BODY, now=TS + offset)


def test_tolerance_is_configurable_and_now_may_be_fractional() -> None:
    """The tolerance argument moves the window, and a float now is compared exactly."""
    assert verify([KEY], vector_headers(), BODY, now=TS + 10, tolerance=10)
    with pytest.raises(StaleTimestamp):
        verify([KEY], vector_headers(), BODY, now=TS + 10.001, tolerance=10)
    with pytest.raises(StaleTimestamp):
        verify([KEY], vector_headers(), BODY, now=float("nan"))


def test_a_forged_stale_webhook_is_an_invalid_signature() -> None:
    """Signatures are checked before the clock, so only authentic webhooks are ever stale."""
    with pytest.raises(InvalidSignature):
        verify([KEY], vector_headers(random_v1()), BODY, now=TS + 10**6)


def test_rotation_accepts_old_and_new_secrets() -> None:
    """During a rotation a webhook signed by either secret, or both, is accepted by either."""
    old, new = generate_secret(), generate_secret()
    old_key, new_key = parse_secret(old), parse_secret(new)
    both = sign_headers([old, new], MSG_ID, BODY, now=TS)
    assert len(both["webhook-signature"].split(" ")) == 2
    for keys in ([old_key], [new_key], [old_key, new_key], [new_key, old_key]):
        assert verify(keys, both, BODY, now=TS)
    only_old = sign_headers(old, MSG_ID, BODY, now=TS)
    assert verify([new_key, old_key], only_old, BODY, now=TS)
    with pytest.raises(InvalidSignature, match="no matching signature"):
        verify([new_key], only_old, BODY, now=TS)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_each_missing_header_is_an_invalid_signature(missing: str) -> None:
    """Without any one of the three headers the webhook is refused, naming that header."""
    headers = vector_headers()
    del headers[missing]
    with pytest.raises(InvalidSignature, match=f"missing {missing} header"):
        verify([KEY], headers, BODY, now=TS)


def test_header_names_are_case_insensitive() -> None:
    """Header names match in any ASCII case; two spellings with different values are refused."""
    headers = {"Webhook-Id": MSG_ID, "WEBHOOK-TIMESTAMP": str(TS), "webhook-Signature": EXPECTED}
    assert verify([KEY], headers, BODY, now=TS)
    assert verify([KEY], {**headers, "webhook-id": MSG_ID}, BODY, now=TS)
    odd_names: dict[Any, Any] = {**headers, 42: "x", b"webhook-id": b"x", "webhoo\u212a-id": "x"}
    assert verify([KEY], odd_names, BODY, now=TS)
    with pytest.raises(InvalidSignature, match="conflicting"):
        verify([KEY], {**headers, "webhook-id": "msg_other"}, BODY, now=TS)


@pytest.mark.parametrize(
    "timestamp",
    [
        "",
        "abc",
        "-1614265330",
        "+1614265330",
        "1614265330.0",
        "1.6e9",
        " 1614265330",
        "1614265330 ",
        "0x60380f32",
        "".join(chr(0xFF10 + int(d)) for d in "1614265330"),  # full-width: isdigit(), not ASCII
        "9" * 13,
        "9" * 4300,
    ],
)
def test_malformed_timestamps_are_invalid_signatures(timestamp: str) -> None:
    """A timestamp that isn't 1 to 12 ASCII digits is refused before any HMAC."""
    with pytest.raises(InvalidSignature, match="webhook-timestamp"):
        verify([KEY], vector_headers(ts=timestamp), BODY, now=TS)


def test_huge_and_zero_timestamps_are_stale_when_signed() -> None:
    """Well-formed but far-off timestamps (0, 12 nines) are stale, not errors of another kind."""
    for ts in (0, 10**12 - 1):
        headers = sign_headers(SECRET, MSG_ID, BODY, now=ts)
        with pytest.raises(StaleTimestamp):
            verify([KEY], headers, BODY, now=TS)


@pytest.mark.parametrize(
    ("signature", "detail"),
    [
        ("", "no v1 signature"),
        ("   ", "no v1 signature"),
        ("garbage", "malformed webhook-signature entry"),
        (",abc", "malformed webhook-signature entry"),
        ("v1,", "wrong length"),
        ("v1,!!!notbase64", "wrong length"),
        ("v1," + "!" * 44, "not base64"),
        ("v1," + "é" * 44, "not base64"),
        ("v1," + EXPECTED[3:-2] + "A=", "no matching"),  # same length, one bit off
        ("v1," + base64.b64encode(bytes(31)).decode(), "wrong length"),
        ("v1," + base64.b64encode(bytes(33)).decode(), "wrong length"),
        ("v1," + base64.b64encode(bytes(32)).decode()[:-1] + "==", "wrong length"),
        (EXPECTED + " garbage", "malformed webhook-signature entry"),
        (EXPECTED + " v1,AAAA", "wrong length"),
        ("v1a," + "A" * 9000, "too long"),
        (" ".join([random_v1() for _ in range(50)] + [EXPECTED]), "too many"),
    ],
)
def test_malformed_or_wrong_signatures_are_invalid(signature: str, detail: str) -> None:
    """Bad base64, wrong lengths, garbage, oversized or non-matching headers are refused."""
    with pytest.raises(InvalidSignature, match=detail):
        verify([KEY], vector_headers(signature), BODY, now=TS)


def test_fifty_entries_are_still_accepted() -> None:
    """The bound is generous: a header of exactly 50 entries, one matching, is accepted."""
    entries = [random_v1() for _ in range(49)] + [EXPECTED]
    assert verify([KEY], vector_headers(" ".join(entries)), BODY, now=TS)


@pytest.mark.parametrize("msg_id", ["", "x" * 257, "msg 1", "msg\n1", "msg\x001", "msg_é", "\t"])
def test_malformed_ids_are_refused(msg_id: str) -> None:
    """Ids must be 1 to 255 visible ASCII characters, both to verify and to sign."""
    headers = {**vector_headers(), "webhook-id": msg_id}
    with pytest.raises(InvalidSignature, match="webhook-id"):
        verify([KEY], headers, BODY, now=TS)
    with pytest.raises(ValueError):
        sign(KEY, msg_id, TS, BODY)


def test_the_body_is_signed_as_bytes_and_never_decoded() -> None:
    """A non-UTF-8 body signs and verifies, and any change to it is refused."""
    body = bytes(range(256)) + b"\xff\xfe\x80"
    headers = sign_headers(SECRET, MSG_ID, body, now=TS)
    assert verify([KEY], headers, body, now=TS)
    with pytest.raises(InvalidSignature, match="no matching"):
        verify([KEY], headers, body + b"\x00", now=TS)


@pytest.mark.parametrize(
    ("secrets", "headers", "body", "now"),
    [
        ([KEY], None, BODY, TS),
        ([KEY], [("webhook-id", MSG_ID)], BODY, TS),
        ([KEY], {**vector_headers(), "webhook-id": 42}, BODY, TS),
        ([KEY], vector_headers(), BODY.decode(), TS),
        ([KEY], vector_headers(), None, TS),
        ([], vector_headers(), BODY, TS),
        ([b""], vector_headers(), BODY, TS),
        ([SECRET], vector_headers(), BODY, TS),
        (SECRET, vector_headers(), BODY, TS),
        (KEY, vector_headers(), BODY, TS),
        (None, vector_headers(), BODY, TS),
        ([KEY], vector_headers(), BODY, None),
        ([KEY], vector_headers(), BODY, "1614265330"),
    ],
)
def test_misuse_is_refused_with_one_of_our_errors(
    secrets: Any, headers: Any, body: Any, now: Any
) -> None:
    """Wrongly typed arguments are refused with InvalidSignature or StaleTimestamp, never let in."""
    with pytest.raises((InvalidSignature, StaleTimestamp)):
        verify(secrets, headers, body, now=now)


def test_parse_secret_accepts_the_usual_spellings() -> None:
    """The whsec_ prefix, padding and surrounding whitespace are all optional."""
    raw = SECRET.removeprefix("whsec_")
    for text in (SECRET, raw, raw + "=", f"  {SECRET}\n"):
        assert parse_secret(text) == base64.b64decode(raw)


@pytest.mark.parametrize(
    "text", ["", "whsec_", "whsec_!!!", "whsec_a", "whsec_abc$", "whsec_é", "whsec_ab cd", "=="]
)
def test_parse_secret_refuses_non_base64(text: str) -> None:
    """A secret that is empty or not base64 is a ValueError when parsed, not later."""
    with pytest.raises(ValueError):
        parse_secret(text)
    with pytest.raises(ValueError):
        sign(text, MSG_ID, TS, BODY)


def test_generate_secret_makes_fresh_32_byte_secrets() -> None:
    """Generated secrets are whsec_ and 32 random bytes, and parse back."""
    first, second = generate_secret(), generate_secret()
    assert first.startswith("whsec_") and first != second
    assert len(parse_secret(first)) == 32


def test_signers_refuse_what_verify_would_refuse() -> None:
    """Signing refuses negative, too long or non-int timestamps, empty keys and no secrets."""
    for bad_ts in (-1, 10**12, 1.5, True):
        with pytest.raises(ValueError):
            sign(KEY, MSG_ID, bad_ts, BODY)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sign(b"", MSG_ID, TS, BODY)
    with pytest.raises(ValueError):
        signature_header([], MSG_ID, TS, BODY)
    assert signature_header([SECRET, KEY], MSG_ID, TS, BODY) == f"{EXPECTED} {EXPECTED}"


def test_signatures_are_compared_only_with_compare_digest() -> None:
    """The module calls hmac.compare_digest and never compares signature values with ==/in/is."""
    source = Path(signing.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "hmac.compare_digest"
    ]
    assert calls, "hmac.compare_digest is not used"
    suspicious = re.compile(r"sig|digest|mac|expected|computed|candidate|raw|key", re.IGNORECASE)
    equality = (ast.Eq, ast.NotEq, ast.In, ast.NotIn, ast.Is, ast.IsNot)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Compare) and any(isinstance(o, equality) for o in node.ops)):
            continue
        for operand in [node.left, *node.comparators]:
            if isinstance(operand, ast.Call) and ast.unparse(operand.func) == "len":
                continue  # comparing lengths is fine
            names = {n.id for n in ast.walk(operand) if isinstance(n, ast.Name)}
            names |= {n.attr for n in ast.walk(operand) if isinstance(n, ast.Attribute)}
            flagged = sorted(name for name in names if suspicious.search(name))
            assert not flagged, f"line {node.lineno}: {ast.unparse(node)}"
    assert "secrets.compare_digest" not in source


# --- Interop with the PyPI ``standardwebhooks`` reference library -------------------------------


def test_our_headers_verify_with_the_reference_library() -> None:
    """Headers from sign_headers, single or rotated, pass standardwebhooks' own verify."""
    now = int(time.time())  # the reference library reads the clock itself
    body = '{"type": "payment.settled", "data": {"amount": "12.50", "note": "café"}}'.encode()
    for secrets in ([SECRET], [generate_secret(), SECRET]):
        headers = sign_headers(secrets, MSG_ID, body, now=now)
        Webhook(SECRET).verify(body, headers, json_parse=False)


def test_reference_signatures_verify_with_ours() -> None:
    """A signature made by standardwebhooks' sign verifies with our verify."""
    signature = Webhook(SECRET).sign(MSG_ID, datetime.fromtimestamp(TS, tz=UTC), BODY.decode())
    assert signature == EXPECTED
    assert verify([KEY], vector_headers(signature), BODY, now=TS)


_ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255)
_utf8_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
_keys = st.binary(min_size=1, max_size=64)


@settings(max_examples=300, deadline=None)
@given(key=_keys, msg_id=_ids, ts=st.integers(0, 2**33), data=_utf8_text)
def test_signing_agrees_with_the_reference_library(
    key: bytes, msg_id: str, ts: int, data: str
) -> None:
    """For any key, id, time and text body, our signature equals the reference library's."""
    theirs = Webhook(key).sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), data)
    assert sign(key, msg_id, ts, data.encode()) == theirs
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": theirs}
    assert verify([key], headers, data.encode(), now=ts) == VerifiedWebhook(msg_id, ts)


# --- W2: properties ----------------------------------------------------------------------------

_GARBAGE = [
    "",
    " ",
    "garbage",
    "v1",
    "v1,",
    ",",
    "v1,!!!notbase64",
    "v1a," + EXPECTED[3:],
    EXPECTED,
    EXPECTED.lower(),
    f"{EXPECTED} {EXPECTED}",
    "v1," + "A" * 44,
    "v1," + "=" * 44,
    "v1," + "\u00e9" * 44,
    "v1,\x00" + EXPECTED[4:],
    "-1",
    "1e9",
    "NaN",
    "inf",
    "0",
    str(TS),
    "\uff11\uff12\uff13",  # full-width digits
    "\ud800",  # a lone surrogate
    "\U0001f600" * 50,
    "A" * 70_000,
    "9" * 5_000,
    " ".join(["v1,"] * 5_000),
    " ".join([EXPECTED] * 51),
    "v1," * 3_000,
    MSG_ID,
    "x" * 257,
]
_names = st.one_of(
    st.sampled_from(
        [
            "webhook-id",
            "Webhook-Id",
            "WEBHOOK-ID",
            "webhook-timestamp",
            "Webhook-Timestamp",
            "webhook-signature",
            "WEBHOOK-SIGNATURE",
            "webhook-signatures",
            "webhoo\u212a-id",  # Kelvin sign: lower() is "k", but not an ASCII header name
            "content-type",
        ]
    ),
    st.text(max_size=20),
)
_entries = st.one_of(
    st.builds(
        lambda version, raw: f"{version},{base64.b64encode(raw).decode()}",
        st.sampled_from(["v1", "v1a", "v2", "", "V1"]),
        st.binary(max_size=40),
    ),
    st.text(max_size=20),
    st.just(EXPECTED),
)
_values = st.one_of(
    st.text(max_size=50),
    st.sampled_from(_GARBAGE),
    st.integers(-(2**70), 2**70).map(str),
    st.lists(_entries, max_size=4).map(" ".join),  # long lists: see _GARBAGE
)
_bodies = st.one_of(st.just(BODY), st.just(BODY), st.binary(max_size=300), st.just(b"\xff\x80"))
_nows = st.one_of(
    st.integers(TS - 400, TS + 400),
    st.integers(TS - 400, TS + 400),
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=True, allow_infinity=True),
)
_tolerances = st.one_of(st.just(300), st.integers(-5, 10**6))
_FIELDS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_field_values = {
    "webhook-id": st.one_of(_ids, _values),
    "webhook-timestamp": st.one_of(st.integers(TS - 400, TS + 400).map(str), _values),
    "webhook-signature": st.one_of(
        st.lists(_entries, min_size=1, max_size=4).map(" ".join), _values
    ),
}


@st.composite
def _near_valid(draw: st.DrawFn) -> dict[str, str]:
    """The vector's headers with some fields replaced, extra headers added or one dropped."""
    headers = vector_headers()
    for name in draw(st.sets(st.sampled_from(_FIELDS), max_size=3)):
        headers[name] = draw(_field_values[name])
    headers.update(draw(st.dictionaries(_names, _values, max_size=1)))
    headers.pop(draw(st.sampled_from(["", "", "", *_FIELDS])), None)
    return headers


# Mostly near-valid headers, so that every check in verify is reached, and some arbitrary ones.
_header_dicts = st.one_of(
    _near_valid(), _near_valid(), _near_valid(), st.dictionaries(_names, _values, max_size=4)
)


@settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    headers=_header_dicts,
    body=_bodies,
    now=_nows,
    tolerance=_tolerances,
    extra_keys=st.lists(_keys, max_size=3),
)
def test_verify_only_ever_raises_our_two_errors(
    headers: dict[str, str], body: bytes, now: float, tolerance: int, extra_keys: list[bytes]
) -> None:
    """For any headers, body and clock, verify returns or raises InvalidSignature/StaleTimestamp."""
    try:
        result = verify([*extra_keys, KEY], headers, body, now=now, tolerance=tolerance)
    except (InvalidSignature, StaleTimestamp) as error:
        assert error.detail and len(error.detail) < 120
    else:
        assert result.webhook_id in headers.values()
        assert abs(result.timestamp - now) <= tolerance


@settings(max_examples=300, deadline=None)
@given(
    signing_keys=st.lists(_keys, min_size=1, max_size=4),
    other_keys=st.lists(_keys, max_size=3),
    msg_id=_ids,
    ts=st.integers(0, 10**12 - 1),
    body=st.binary(max_size=500),
    skew=st.integers(-300, 300),
    data=st.data(),
)
def test_anything_correctly_signed_verifies(
    signing_keys: list[bytes],
    other_keys: list[bytes],
    msg_id: str,
    ts: int,
    body: bytes,
    skew: int,
    data: st.DataObject,
) -> None:
    """Any id, timestamp and body signed by any active key verifies within the tolerance."""
    headers = sign_headers(signing_keys, msg_id, body, now=ts)
    one = data.draw(st.sampled_from(signing_keys))
    keys = data.draw(st.permutations([one, *other_keys]))
    assert verify(keys, headers, body, now=ts + skew) == VerifiedWebhook(msg_id, ts)
    upper = {name.upper(): value for name, value in headers.items()}
    assert verify(keys, upper, body, now=ts - skew) == VerifiedWebhook(msg_id, ts)
