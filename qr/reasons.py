"""The catalogue of verdict reasons a gate reports for a QR ride code.

Each name is part of the wire contract in `shared/QR_FORMAT.md`: gates upload it with the ride
and the gateway counts it, so a name never changes meaning and is never reused. This module must
never grow a reason that is not in that document.
"""

from enum import StrEnum


class Reason(StrEnum):
    """Why a gate refused a code, in the order the checks run (the first failure wins)."""

    MALFORMED = "malformed"
    UNKNOWN_ISSUER_KEY = "unknown_issuer_key"
    BAD_ISSUER_SIGNATURE = "bad_issuer_signature"
    CERTIFICATE_EXPIRED = "certificate_expired"
    CERTIFICATE_NOT_YET_VALID = "certificate_not_yet_valid"
    CODE_EXPIRED = "code_expired"
    CODE_FROM_FUTURE = "code_from_future"
    BAD_DEVICE_SIGNATURE = "bad_device_signature"
    ACCOUNT_DENIED = "account_denied"
    DEVICE_REVOKED = "device_revoked"
    REPLAYED = "replayed"
