"""Who is calling: the kinds of principal (DESIGN.md section 8)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class PrincipalKind(enum.StrEnum):
    RIDER = "rider"
    PARTNER = "partner"
    TERMINAL = "terminal"
    ADMIN = "admin"  # operator staff: role "admin" may change things, "auditor" only reads
    # A payment channel's notification, proven by the channel's own signature over the raw
    # body (the connector checks it); id is the channel's name.
    CHANNEL = "channel"


@dataclass(frozen=True, slots=True)
class Principal:
    kind: PrincipalKind
    id: str
    role: str | None = None  # operators only
    operator: str | None = None  # terminals: the transport operator they belong to
    session: str | None = None  # riders: the login session (refresh token family) of the token
    limits: tuple[int, int] | None = None  # (per second, burst) when not the kind's default

    @property
    def key(self) -> str:
        """Stable text form: idempotency keys, rate-limit buckets and logs use it."""
        return f"{self.kind.value}:{self.id}"
