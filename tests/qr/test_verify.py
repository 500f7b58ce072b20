from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qr.format import OnlineCode, RiderCertificate, decode_code, encode_text
from qr.reasons import Reason
from qr.signing import (
    device_fingerprint,
    generate_private_key,
    issue_online_code,
    sign_raw,
)
from qr.verify import CertificateCache, MemoryReplayCache, Verdict, verify
from tests.qr.keys import (
    ISSUER,
    ISSUER_KEYS,
    KEY_ID,
    NOW,
    VALID_FROM,
    VALID_UNTIL,
    flip,
    rider,
    signed_offline,
    x_not_on_curve,
)

PHONE = rider(account_id=4242, ceiling_fen=800)
DEVICE_FP = device_fingerprint(PHONE.certificate.device_public_key)
ALL_KEYS = dict.fromkeys(range(256), ISSUER.public_key())


def check(code: bytes | str, now: int = NOW, **kwargs: object) -> Verdict:
    return verify(code, ISSUER_KEYS, now, cert_cache=CertificateCache(), **kwargs)  # type: ignore[arg-type]


def resigned_certificate(cert: RiderCertificate, **changes: int) -> RiderCertificate:
    draft = dataclasses.replace(cert, **changes)
    return dataclasses.replace(draft, issuer_signature=sign_raw(ISSUER, draft.signed_part()))


# --- type 01: accepted -------------------------------------------------------------------


def test_a_fresh_offline_code_is_accepted_with_its_fields() -> None:
    code = PHONE.make_code(NOW)
    verdict = check(code, seen=MemoryReplayCache())
    assert verdict.ok and verdict.reason is None
    assert verdict.type == 1 and verdict.issuer_key_id == KEY_ID
    assert verdict.account_id == 4242 and verdict.ceiling_fen == 800
    assert verdict.generated_at == NOW and verdict.counter == decode_code(code).counter  # type: ignore[union-attr]
    assert verdict.device_fingerprint == DEVICE_FP
    assert verdict.replay_key == b"\x01" + (4242).to_bytes(8, "big") + code[123:129]
    assert len(verdict.replay_key) == 15
    assert check(encode_text(code)).ok  # the text form too


# --- type 01: every reason ---------------------------------------------------------------


def test_malformed() -> None:
    code = PHONE.make_code(NOW)
    assert check(code[:-1]).reason == Reason.MALFORMED
    assert check(code + b"\0").reason == Reason.MALFORMED
    assert check(flip(code, 4)).reason == Reason.MALFORMED  # certificate version
    assert check(b"").reason == Reason.MALFORMED
    assert check("not base64url!").reason == Reason.MALFORMED


def test_unknown_issuer_key() -> None:
    assert verify(PHONE.make_code(NOW), {KEY_ID + 1: ISSUER.public_key()}, NOW).reason == (
        Reason.UNKNOWN_ISSUER_KEY
    )


def test_bad_issuer_signature() -> None:
    code = PHONE.make_code(NOW)
    assert check(flip(code, 4 + 60)).reason == Reason.BAD_ISSUER_SIGNATURE  # issuer signature
    assert check(flip(code, 4 + 52)).reason == Reason.BAD_ISSUER_SIGNATURE  # ceiling
    other_issuer = generate_private_key()
    forged = rider(issuer=other_issuer).make_code(NOW)
    assert check(forged).reason == Reason.BAD_ISSUER_SIGNATURE


def test_certificate_window_boundaries() -> None:
    code = PHONE.make_code(NOW)
    assert check(code, now=VALID_UNTIL).reason == Reason.CERTIFICATE_EXPIRED
    assert check(code, now=VALID_FROM - 1).reason == Reason.CERTIFICATE_NOT_YET_VALID
    start = rider(valid_from=NOW, valid_until=NOW + 10)
    assert check(start.make_code(NOW), now=NOW).ok
    assert check(start.make_code(NOW), now=NOW - 1).reason == Reason.CERTIFICATE_NOT_YET_VALID
    end = rider(valid_from=NOW - 10, valid_until=NOW)
    assert check(end.make_code(NOW - 1), now=NOW - 1).ok
    assert check(end.make_code(NOW), now=NOW).reason == Reason.CERTIFICATE_EXPIRED


@pytest.mark.parametrize(
    ("generated_at", "reason"),
    [
        (NOW - 61, Reason.CODE_EXPIRED),
        (NOW - 60, None),
        (NOW, None),
        (NOW + 5, None),
        (NOW + 6, Reason.CODE_FROM_FUTURE),
    ],
)
def test_code_window_boundaries(generated_at: int, reason: Reason | None) -> None:
    verdict = check(PHONE.make_code(generated_at))
    assert verdict.reason == reason
    assert verdict.ok is (reason is None)


def test_code_window_is_configurable() -> None:
    assert check(PHONE.make_code(NOW - 11), window_past_s=10).reason == Reason.CODE_EXPIRED
    assert check(PHONE.make_code(NOW - 10), window_past_s=10).ok
    assert check(PHONE.make_code(NOW + 1), window_future_s=0).reason == Reason.CODE_FROM_FUTURE
    assert check(PHONE.make_code(NOW), window_future_s=0).ok


def test_bad_device_signature() -> None:
    code = PHONE.make_code(NOW)
    assert check(flip(code, 192)).reason == Reason.BAD_DEVICE_SIGNATURE
    assert check(flip(code, 128)).reason == Reason.BAD_DEVICE_SIGNATURE  # counter
    # A certificate for this device, codes signed by another device key.
    stolen = signed_offline(PHONE.certificate, generate_private_key(), NOW, 1)
    assert check(stolen).reason == Reason.BAD_DEVICE_SIGNATURE


def test_issuer_signed_garbage_device_key_is_refused_not_raised() -> None:
    device = generate_private_key()
    x_off_curve = b"\x02" + x_not_on_curve()
    cert = resigned_certificate(PHONE.certificate)
    cert = dataclasses.replace(cert, device_public_key=x_off_curve)
    cert = resigned_certificate(cert)
    code = signed_offline(cert, device, NOW, 0)
    assert check(code).reason == Reason.BAD_DEVICE_SIGNATURE


def test_account_denied_and_device_revoked_carry_authenticated_fields() -> None:
    code = PHONE.make_code(NOW)
    denied = check(code, deny={4242})
    assert denied.reason == Reason.ACCOUNT_DENIED and not denied.ok
    assert denied.account_id == 4242
    revoked = check(code, revoked_devices={DEVICE_FP})
    assert revoked.reason == Reason.DEVICE_REVOKED and revoked.device_fingerprint == DEVICE_FP
    assert check(code, deny={1}, revoked_devices={b"\0" * 8}).ok


def test_replayed_and_refusals_do_not_burn_the_code() -> None:
    seen = MemoryReplayCache()
    code = PHONE.make_code(NOW)
    assert check(code, seen=seen, deny={4242}).reason == Reason.ACCOUNT_DENIED
    assert check(code, seen=seen, revoked_devices={DEVICE_FP}).reason == Reason.DEVICE_REVOKED
    assert check(flip(code, 192), seen=seen).reason == Reason.BAD_DEVICE_SIGNATURE
    assert len(seen) == 0
    assert check(code, seen=seen).ok
    replayed = check(code, seen=seen, now=NOW + 30)
    assert replayed.reason == Reason.REPLAYED and replayed.account_id == 4242
    assert check(PHONE.make_code(NOW), seen=seen).ok  # next counter, same second


def test_fields_are_not_filled_before_the_signatures_verified() -> None:
    verdict = check(PHONE.make_code(NOW - 61))
    assert verdict == Verdict(ok=False, reason=Reason.CODE_EXPIRED)


# --- the order of the checks: the earlier failure is the one reported --------------------


def _expired_cert_code() -> bytes:
    return rider(valid_from=NOW - 100, valid_until=NOW - 50).make_code(NOW - 200)


@pytest.mark.parametrize(
    ("make", "kwargs", "reason"),
    [
        # malformed beats unknown key: wrong cert version with an unknown key id
        (lambda: flip(flip(PHONE.make_code(NOW), 4), 5), {}, Reason.MALFORMED),
        # unknown key beats bad issuer signature
        (lambda: flip(PHONE.make_code(NOW), 5), {}, Reason.UNKNOWN_ISSUER_KEY),
        # bad issuer signature beats an expired certificate and an old code
        (lambda: flip(_expired_cert_code(), 70), {}, Reason.BAD_ISSUER_SIGNATURE),
        # expired certificate beats an old code and a bad device signature
        (lambda: flip(_expired_cert_code(), 192), {}, Reason.CERTIFICATE_EXPIRED),
        # code expired beats a bad device signature
        (lambda: flip(PHONE.make_code(NOW - 61), 192), {}, Reason.CODE_EXPIRED),
        (lambda: flip(PHONE.make_code(NOW + 6), 192), {}, Reason.CODE_FROM_FUTURE),
        # bad device signature beats deny list and revocation
        (
            lambda: flip(PHONE.make_code(NOW), 192),
            {"deny": {4242}, "revoked_devices": {DEVICE_FP}},
            Reason.BAD_DEVICE_SIGNATURE,
        ),
        # account denied beats device revoked
        (
            lambda: PHONE.make_code(NOW),
            {"deny": {4242}, "revoked_devices": {DEVICE_FP}},
            Reason.ACCOUNT_DENIED,
        ),
    ],
)
def test_first_failure_is_reported(make, kwargs, reason) -> None:  # type: ignore[no-untyped-def]
    assert check(make(), **kwargs).reason == reason


def test_revoked_beats_replayed() -> None:
    seen = MemoryReplayCache()
    code = PHONE.make_code(NOW)
    assert check(code, seen=seen).ok
    assert check(code, seen=seen, deny={4242}).reason == Reason.ACCOUNT_DENIED
    assert check(code, seen=seen, revoked_devices={DEVICE_FP}).reason == Reason.DEVICE_REVOKED
    assert check(code, seen=seen).reason == Reason.REPLAYED


# --- type 02 -----------------------------------------------------------------------------


def online(issued_at: int = NOW, account_id: int = 77, ttl_s: int = 30) -> bytes:
    return issue_online_code(ISSUER, KEY_ID, account_id, issued_at, ttl_s).to_bytes()


def test_online_code_accepted_with_its_fields() -> None:
    code = online()
    verdict = check(code)
    parsed = OnlineCode.from_bytes(code)
    assert verdict.ok and verdict.type == 2 and verdict.account_id == 77
    assert verdict.issued_at == NOW and verdict.expires_at == NOW + 30
    assert verdict.nonce == parsed.nonce and verdict.replay_key == b"\x02" + parsed.nonce
    assert verdict.device_fingerprint is None and verdict.generated_at is None


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        (NOW - 6, Reason.CODE_FROM_FUTURE),
        (NOW - 5, None),
        (NOW + 29, None),
        (NOW + 30, Reason.CODE_EXPIRED),
    ],
)
def test_online_window_boundaries(now: int, reason: Reason | None) -> None:
    assert check(online(), now=now).reason == reason


def test_online_window_future_is_configurable() -> None:
    assert check(online(), now=NOW - 1, window_future_s=0).reason == Reason.CODE_FROM_FUTURE
    assert check(online(), now=NOW - 2, window_future_s=2).ok
    # window_past_s does not apply: a type 02 code lives until its own expiry.
    assert check(online(ttl_s=300), now=NOW + 299, window_past_s=1).ok


def test_online_reasons_in_order() -> None:
    code = online()
    assert check(code[:-1]).reason == Reason.MALFORMED
    assert check(flip(code, 3, 0x03)).reason == Reason.MALFORMED  # type 01 at 93 bytes
    assert check(flip(code, 4)).reason == Reason.UNKNOWN_ISSUER_KEY
    # bad signature beats expiry
    assert check(flip(code, 92), now=NOW + 100).reason == Reason.BAD_ISSUER_SIGNATURE
    assert check(flip(code, 14)).reason == Reason.BAD_ISSUER_SIGNATURE  # issued at
    # expiry beats deny list
    assert check(code, now=NOW + 30, deny={77}).reason == Reason.CODE_EXPIRED
    seen = MemoryReplayCache()
    assert check(code, seen=seen, deny={77}).reason == Reason.ACCOUNT_DENIED
    assert check(code, seen=seen).ok
    assert check(code, seen=seen, now=NOW + 29).reason == Reason.REPLAYED
    # revoked devices do not apply to an online code
    assert check(online(), revoked_devices={DEVICE_FP}).ok


# --- never raises ------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_random_bytes_are_refused_never_raised(data: bytes) -> None:
    verdict = verify(data, ALL_KEYS, NOW, cert_cache=CertificateCache())
    assert not verdict.ok and verdict.reason == Reason.MALFORMED


@given(st.sampled_from([b"OC\x01\x01\x01", b"OC\x01\x02"]), st.binary(min_size=190, max_size=190))
def test_random_bodies_behind_a_good_header_are_refused(header: bytes, body: bytes) -> None:
    size = 193 if header[3] == 1 else 93
    code = (header + body)[:size]
    verdict = verify(code, ALL_KEYS, NOW, cert_cache=CertificateCache())
    assert not verdict.ok
    assert verdict.reason in {Reason.BAD_ISSUER_SIGNATURE, Reason.UNKNOWN_ISSUER_KEY}


@given(st.binary(min_size=2 + 64, max_size=2 + 64))
def test_random_device_part_after_a_good_certificate(tail: bytes) -> None:
    code = PHONE.make_code(NOW)[:123] + NOW.to_bytes(4, "big") + tail
    verdict = verify(code, ISSUER_KEYS, NOW)
    assert verdict.reason == Reason.BAD_DEVICE_SIGNATURE


@given(st.text(max_size=400))
def test_random_strings_are_refused_never_raised(text: str) -> None:
    verdict = verify(text, ALL_KEYS, NOW)
    assert not verdict.ok and verdict.reason == Reason.MALFORMED


@pytest.mark.parametrize("thing", [None, 193, 1.5, ["OC"], object()])
def test_non_bytes_non_str_are_malformed(thing: object) -> None:
    assert verify(thing, ISSUER_KEYS, NOW).reason == Reason.MALFORMED  # type: ignore[arg-type]


def test_bytearray_and_memoryview_are_accepted() -> None:
    code = PHONE.make_code(NOW)
    assert verify(bytearray(code), ISSUER_KEYS, NOW).ok  # type: ignore[arg-type]
    assert verify(memoryview(code), ISSUER_KEYS, NOW).ok  # type: ignore[arg-type]


def test_a_non_p256_issuer_key_counts_as_unknown() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    assert verify(PHONE.make_code(NOW), {KEY_ID: other}, NOW).reason == Reason.UNKNOWN_ISSUER_KEY
    assert verify(online(), {KEY_ID: other}, NOW).reason == Reason.UNKNOWN_ISSUER_KEY


def test_reason_names_are_exactly_the_documented_ones() -> None:
    assert [r.value for r in Reason] == [
        "malformed",
        "unknown_issuer_key",
        "bad_issuer_signature",
        "certificate_expired",
        "certificate_not_yet_valid",
        "code_expired",
        "code_from_future",
        "bad_device_signature",
        "account_denied",
        "device_revoked",
        "replayed",
    ]


def test_verdict_to_dict_is_json() -> None:
    payload = json.loads(json.dumps(check(PHONE.make_code(NOW)).to_dict()))
    assert payload["ok"] is True and payload["reason"] is None
    assert payload["device_fingerprint"] == DEVICE_FP.hex()
    refused = json.loads(json.dumps(check(b"x").to_dict()))
    assert refused == {"ok": False, "reason": "malformed"}
