"""Offline verification of QR ride codes: the gate SDK.

A gate calls `verify(code, issuer_keys, now, ...)` for every code it scans and gets a `Verdict`.
The checks run in the order of `shared/QR_FORMAT.md` and the first failure is the reason::

    1 malformed   2 unknown_issuer_key   3 bad_issuer_signature
    4 certificate_expired / certificate_not_yet_valid   (type 01)
    5 code_expired / code_from_future   (type 01: now - 60 <= generated at <= now + 5;
                                         type 02: issued at - 5 <= now < expires at)
    6 bad_device_signature   (type 01)
    7 account_denied, then device_revoked   (type 01)
    8 replayed

Replay keys (what a `ReplayCache` stores; a gateway's shared cache must use the same bytes):

    type 01: 01 || account id (8) || generated at (4) || counter (2)    15 bytes
    type 02: 02 || nonce (8)                                            9 bytes

both as on the wire (big-endian). An entry is needed until the code could no longer pass the
time check: `generated at + window_past_s + 1` for type 01, `expires at` for type 02. A code is
recorded only when every other check passed, so a refused code never burns a key.

A gate sees the same rider certificate many times a day, so verified certificates are kept in
a bounded LRU `CertificateCache`, keyed by the certificate bytes together with the issuer public
key that verified them: a repeat rider costs one ECDSA verification instead of two, and a
changed or rotated issuer key cannot reuse an entry made under another key.

This module must never raise on any code, whatever its type, length or content (a refused code
is a Verdict, never an exception), never read the clock (`now` is passed in), never cache a
failed verification, and never import aiohttp, asyncpg or redis.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Container, Mapping
from typing import Any, Final, NamedTuple, Protocol

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from qr.format import (
    CERT_SIGNED_BYTES,
    CERT_STRUCT,
    CERT_VERSION,
    HEADER_BYTES,
    HEADER_OFFLINE,
    HEADER_ONLINE,
    OFFLINE_CERT_OFFSET,
    OFFLINE_CODE_BYTES,
    OFFLINE_SIGNED_BYTES,
    OFFLINE_TAIL_OFFSET,
    OFFLINE_TAIL_STRUCT,
    ONLINE_CODE_BYTES,
    ONLINE_SIGNED_BYTES,
    ONLINE_STRUCT,
    TYPE_OFFLINE,
    TYPE_ONLINE,
    Malformed,
    decode_text,
)
from qr.reasons import Reason
from qr.signing import InvalidPublicKey, decode_public_key, device_fingerprint, verify_raw

WINDOW_PAST_S_DEFAULT: Final = 60
WINDOW_FUTURE_S_DEFAULT: Final = 5
REPLAY_ENTRIES_MAX_DEFAULT: Final = 16_384
CERT_CACHE_ENTRIES_MAX_DEFAULT: Final = 4_096
ISSUER_KEYS_MEMO_MAX: Final = 64

_REPLAY_PREFIX_OFFLINE: Final = bytes([TYPE_OFFLINE])
_REPLAY_PREFIX_ONLINE: Final = bytes([TYPE_ONLINE])
# Account id inside a type 01 code: certificate offset + version + key id.
_OFFLINE_ACCOUNT_OFFSET: Final = OFFLINE_CERT_OFFSET + 2


class Verdict(NamedTuple):
    """What a gate decides about one code (immutable).

    `ok` is True only when every check passed; otherwise `reason` names the first failure. The
    code's fields are filled only when its signatures verified (ok, account_denied,
    device_revoked, replayed), so nothing here is ever unauthenticated data; on other reasons
    they are None. `replay_key` and `device_fingerprint` (type 01) let a gateway share the
    replay cache and deny lists.

    A NamedTuple rather than a frozen dataclass: a gate builds one per scan, and this costs a
    fraction of a microsecond instead of two.
    """

    ok: bool
    reason: Reason | None = None
    type: int | None = None
    issuer_key_id: int | None = None
    account_id: int | None = None
    generated_at: int | None = None
    counter: int | None = None
    issued_at: int | None = None
    expires_at: int | None = None
    nonce: bytes | None = None
    ceiling_fen: int | None = None
    device_fingerprint: bytes | None = None
    replay_key: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; bytes as lowercase hex; None fields left out except `reason`."""
        out: dict[str, Any] = {"ok": self.ok, "reason": self.reason and str(self.reason)}
        for name, value in zip(self._fields[2:], self[2:], strict=True):
            if value is not None:
                out[name] = value.hex() if isinstance(value, bytes) else value
        return out


def _refusal(reason: Reason) -> Verdict:
    return Verdict(ok=False, reason=reason)


# Refusals that carry no field are shared: a Verdict is immutable.
_REFUSED: Final = {reason: _refusal(reason) for reason in Reason}


class ReplayCache(Protocol):
    """Remembers accepted codes until they could no longer pass the time check."""

    def add_if_absent(self, key: bytes, expires_at: int, now: int) -> bool:
        """Record `key` until `expires_at` (unix s, exclusive); False when it is already there."""
        ...


class MemoryReplayCache:
    """A bounded in-memory `ReplayCache` for one gate (not thread-safe: one per scan loop).

    Expired entries are dropped first. When the cache is still full, the oldest entry is
    evicted and counted in `evicted`: that code could then be replayed within its window, so
    size `max_entries` above the most codes a gate accepts in `window_past_s + 1` seconds
    (a busy gate takes about one rider a second: the default is generous). Memory stays
    bounded under any flood: at most `max_entries` keys and `2 * max_entries` expiry records.
    """

    def __init__(self, max_entries: int = REPLAY_ENTRIES_MAX_DEFAULT) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries: Final = max_entries
        self.evicted = 0
        self.expired = 0
        self._entries: OrderedDict[bytes, int] = OrderedDict()
        self._expiry: list[tuple[int, bytes]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def add_if_absent(self, key: bytes, expires_at: int, now: int) -> bool:
        self._drop_expired(now)
        if key in self._entries:
            return False
        if expires_at <= now:
            return True  # could never be replayed inside its window: nothing to remember
        while len(self._entries) >= self.max_entries:
            self._entries.popitem(last=False)
            self.evicted += 1
        self._entries[key] = expires_at
        heapq.heappush(self._expiry, (expires_at, key))
        if len(self._expiry) > 2 * self.max_entries:
            # Evictions leave stale expiry records behind; rebuild from the live entries.
            self._expiry = [(exp, k) for k, exp in self._entries.items()]
            heapq.heapify(self._expiry)
        return True

    def _drop_expired(self, now: int) -> None:
        expiry = self._expiry
        entries = self._entries
        while expiry and expiry[0][0] <= now:
            expires_at, key = heapq.heappop(expiry)
            if entries.get(key) == expires_at:
                del entries[key]
                self.expired += 1


class VerifiedCertificate(NamedTuple):
    """A rider certificate whose issuer signature verified, with its device key loaded."""

    issuer_key_id: int
    account_id: int
    device_public_key: bytes
    device_key: ec.EllipticCurvePublicKey | None  # None: not a point (only an issuer bug)
    device_fingerprint: bytes
    valid_from: int
    valid_until: int
    ceiling_fen: int


def _load_certificate(cert: bytes) -> VerifiedCertificate:
    _, key_id, account, device_key, valid_from, valid_until, ceiling, _ = CERT_STRUCT.unpack(cert)
    try:
        key: ec.EllipticCurvePublicKey | None = decode_public_key(device_key)
    except InvalidPublicKey:
        key = None
    return VerifiedCertificate(
        issuer_key_id=key_id,
        account_id=account,
        device_public_key=device_key,
        device_key=key,
        device_fingerprint=device_fingerprint(device_key),
        valid_from=valid_from,
        valid_until=valid_until,
        ceiling_fen=ceiling,
    )


class CertificateCache:
    """Bounded LRU of certificates already verified, keyed by (certificate, issuer key) bytes.

    Only successes are stored, so a flood of forged certificates costs the attacker an ECDSA
    verification each and never evicts more than `max_entries` honest riders' worth of work.
    `max_entries=0` disables caching. Not thread-safe, like `MemoryReplayCache`.
    """

    def __init__(self, max_entries: int = CERT_CACHE_ENTRIES_MAX_DEFAULT) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must not be negative")
        self.max_entries: Final = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, VerifiedCertificate] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def get(self, certificate: bytes, issuer_public_key: bytes) -> VerifiedCertificate | None:
        key = certificate + issuer_public_key
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, certificate: bytes, issuer_public_key: bytes, entry: VerifiedCertificate) -> None:
        if self.max_entries == 0:
            return
        self._entries[certificate + issuer_public_key] = entry
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


DEFAULT_CERT_CACHE: Final = CertificateCache()

# id(key object) -> (the object, its compressed point). Holding the object keeps its id from
# being reused, so an id can never name another key. Bounded: cleared when full.
_issuer_key_points: dict[int, tuple[ec.EllipticCurvePublicKey, bytes | None]] = {}


def _issuer_key_point(key: ec.EllipticCurvePublicKey) -> bytes | None:
    """The compressed point of an issuer key, or None when it is not a P-256 public key."""
    memo = _issuer_key_points.get(id(key))
    if memo is not None and memo[0] is key:
        return memo[1]
    point: bytes | None = None
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        point = key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    if len(_issuer_key_points) >= ISSUER_KEYS_MEMO_MAX:
        _issuer_key_points.clear()
    _issuer_key_points[id(key)] = (key, point)
    return point


def verify(
    code: bytes | str,
    issuer_keys: Mapping[int, ec.EllipticCurvePublicKey],
    now: int,
    deny: Container[int] = frozenset(),
    revoked_devices: Container[bytes] = frozenset(),
    seen: ReplayCache | None = None,
    window_past_s: int = WINDOW_PAST_S_DEFAULT,
    window_future_s: int = WINDOW_FUTURE_S_DEFAULT,
    *,
    cert_cache: CertificateCache | None = None,
) -> Verdict:
    """Decide whether a gate accepts `code` (bytes as scanned, or its base64url text) at `now`.

    `issuer_keys` maps issuer key id to public key (a key that is not P-256 counts as unknown);
    `deny` holds account ids; `revoked_devices` holds device fingerprints (8 bytes); `seen`
    records accepted codes (None: no replay check, e.g. when the gateway checks replay
    itself); `cert_cache` defaults to a module-wide cache of 4096 certificates.
    """
    if not isinstance(code, bytes):
        if isinstance(code, str):
            try:
                code = decode_text(code)
            except Malformed:
                return _REFUSED[Reason.MALFORMED]
        elif isinstance(code, bytearray | memoryview):
            code = bytes(code)
        else:
            return _REFUSED[Reason.MALFORMED]
    size = len(code)
    if size == OFFLINE_CODE_BYTES and code[:HEADER_BYTES] == HEADER_OFFLINE:
        return _verify_offline(
            code,
            issuer_keys,
            now,
            deny,
            revoked_devices,
            seen,
            window_past_s,
            window_future_s,
            DEFAULT_CERT_CACHE if cert_cache is None else cert_cache,
        )
    if size == ONLINE_CODE_BYTES and code[:HEADER_BYTES] == HEADER_ONLINE:
        return _verify_online(code, issuer_keys, now, deny, seen, window_future_s)
    return _REFUSED[Reason.MALFORMED]


def _verify_offline(
    code: bytes,
    issuer_keys: Mapping[int, ec.EllipticCurvePublicKey],
    now: int,
    deny: Container[int],
    revoked_devices: Container[bytes],
    seen: ReplayCache | None,
    window_past_s: int,
    window_future_s: int,
    cert_cache: CertificateCache,
) -> Verdict:
    if code[OFFLINE_CERT_OFFSET] != CERT_VERSION:
        return _REFUSED[Reason.MALFORMED]
    key_id = code[OFFLINE_CERT_OFFSET + 1]
    issuer_key = issuer_keys.get(key_id)
    issuer_point = None if issuer_key is None else _issuer_key_point(issuer_key)
    if issuer_key is None or issuer_point is None:
        return _REFUSED[Reason.UNKNOWN_ISSUER_KEY]
    cert = code[OFFLINE_CERT_OFFSET:OFFLINE_TAIL_OFFSET]
    entry = cert_cache.get(cert, issuer_point)
    if entry is None:
        if not verify_raw(issuer_key, cert[CERT_SIGNED_BYTES:], cert[:CERT_SIGNED_BYTES]):
            return _REFUSED[Reason.BAD_ISSUER_SIGNATURE]
        entry = _load_certificate(cert)
        cert_cache.put(cert, issuer_point, entry)
    _, account_id, _, device_key, fingerprint, valid_from, valid_until, ceiling_fen = entry
    if now >= valid_until:
        return _REFUSED[Reason.CERTIFICATE_EXPIRED]
    if now < valid_from:
        return _REFUSED[Reason.CERTIFICATE_NOT_YET_VALID]
    generated_at, counter = OFFLINE_TAIL_STRUCT.unpack_from(code, OFFLINE_TAIL_OFFSET)
    if generated_at < now - window_past_s:
        return _REFUSED[Reason.CODE_EXPIRED]
    if generated_at > now + window_future_s:
        return _REFUSED[Reason.CODE_FROM_FUTURE]
    if device_key is None or not verify_raw(
        device_key, code[OFFLINE_SIGNED_BYTES:], code[:OFFLINE_SIGNED_BYTES]
    ):
        return _REFUSED[Reason.BAD_DEVICE_SIGNATURE]
    replay_key = (
        _REPLAY_PREFIX_OFFLINE
        + code[_OFFLINE_ACCOUNT_OFFSET : _OFFLINE_ACCOUNT_OFFSET + 8]
        + code[OFFLINE_TAIL_OFFSET:OFFLINE_SIGNED_BYTES]
    )
    reason: Reason | None = None
    if account_id in deny:
        reason = Reason.ACCOUNT_DENIED
    elif fingerprint in revoked_devices:
        reason = Reason.DEVICE_REVOKED
    elif seen is not None and not seen.add_if_absent(
        replay_key, generated_at + window_past_s + 1, now
    ):
        reason = Reason.REPLAYED
    # Positional: keyword arguments to a NamedTuple cost three times as much, once per scan.
    return Verdict(
        reason is None,  # ok
        reason,
        TYPE_OFFLINE,
        key_id,
        account_id,
        generated_at,
        counter,
        None,  # issued_at
        None,  # expires_at
        None,  # nonce
        ceiling_fen,
        fingerprint,
        replay_key,
    )


def _verify_online(
    code: bytes,
    issuer_keys: Mapping[int, ec.EllipticCurvePublicKey],
    now: int,
    deny: Container[int],
    seen: ReplayCache | None,
    window_future_s: int,
) -> Verdict:
    _, key_id, account_id, issued_at, expires_at, nonce, signature = ONLINE_STRUCT.unpack(code)
    issuer_key = issuer_keys.get(key_id)
    if issuer_key is None or _issuer_key_point(issuer_key) is None:
        return _REFUSED[Reason.UNKNOWN_ISSUER_KEY]
    if not verify_raw(issuer_key, signature, code[:ONLINE_SIGNED_BYTES]):
        return _REFUSED[Reason.BAD_ISSUER_SIGNATURE]
    if now >= expires_at:
        return _REFUSED[Reason.CODE_EXPIRED]
    if now < issued_at - window_future_s:
        return _REFUSED[Reason.CODE_FROM_FUTURE]
    replay_key = _REPLAY_PREFIX_ONLINE + nonce
    reason: Reason | None = None
    if account_id in deny:
        reason = Reason.ACCOUNT_DENIED
    elif seen is not None and not seen.add_if_absent(replay_key, expires_at, now):
        reason = Reason.REPLAYED
    return Verdict(
        reason is None,  # ok
        reason,
        TYPE_ONLINE,
        key_id,
        account_id,
        None,  # generated_at
        None,  # counter
        issued_at,
        expires_at,
        nonce,
        None,  # ceiling_fen
        None,  # device_fingerprint
        replay_key,
    )
