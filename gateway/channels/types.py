"""The neutral types every connector converts to and from, and the errors it raises.

Nothing here knows a channel's field names or an order's state: the top-ups area speaks these
types, each connector translates them into its channel's protocol.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Protocol


class Channel(enum.StrEnum):
    ALIPAY = "alipay"
    WECHATPAY = "wechatpay"
    UNIONPAY = "unionpay"


class TradeState(enum.StrEnum):
    WAITING = "waiting"  # known to the channel, not paid (yet)
    PAID = "paid"
    CLOSED = "closed"  # closed unpaid: by us, or expired at the channel
    # Paid, then refunded in full. A channel that cannot tell a full refund from a partial
    # one (WeChat's REFUND state) reports PAID; its refund queries tell how much went back.
    REFUNDED = "refunded"
    NOT_FOUND = "not_found"  # the channel has no such trade (never created, or not yet)


class RefundState(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NOT_FOUND = "not_found"


class Anomaly(enum.StrEnum):
    """Why a signed, well-formed answer must not be credited: an operator looks at it."""

    INEXACT_AMOUNT = "inexact_amount"  # not a whole number of fen
    CURRENCY = "currency"  # not CNY


@dataclass(frozen=True)
class PaymentOrder:
    out_trade_no: str  # ours, unique per order: the channel's idempotency key for it
    amount_fen: int
    subject: str
    notify_url: str
    expires_at: datetime


@dataclass(frozen=True)
class AppPayment:
    """What the phone hands to the channel's app SDK (an order string, a prepay id, a tn)."""

    channel: Channel
    params: dict[str, str]


@dataclass(frozen=True)
class TradeStatus:
    out_trade_no: str
    state: TradeState
    channel_trade_no: str | None = None
    amount_fen: int | None = None  # what the channel says was paid; None with an anomaly
    paid_at: datetime | None = None
    anomaly: Anomaly | None = None


@dataclass(frozen=True)
class RefundOrder:
    out_trade_no: str
    out_refund_no: str  # ours, unique per refund: the channel's idempotency key for it
    refund_fen: int
    total_fen: int
    reason: str
    notify_url: str


@dataclass(frozen=True)
class RefundStatus:
    out_trade_no: str
    out_refund_no: str
    state: RefundState
    refund_fen: int | None = None
    anomaly: Anomaly | None = None


@dataclass(frozen=True)
class Ack:
    """The answer a channel expects to a notification it sent (Alipay: the body `success`)."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain"


@dataclass(frozen=True)
class Notification:
    """A verified notification: a payment's or a refund's new state, and how to answer it."""

    ack: Ack
    payment: TradeStatus | None = None
    refund: RefundStatus | None = None


@dataclass(frozen=True)
class StatementLine:
    kind: str  # "payment" | "refund"
    out_trade_no: str
    channel_trade_no: str
    amount_fen: int  # positive for both kinds
    fee_fen: int  # positive for both kinds: charged on a payment, given back on a refund
    at: datetime
    out_refund_no: str | None = None


@dataclass(frozen=True)
class Statement:
    day: date
    lines: list[StatementLine] = field(default_factory=list)


class ChannelError(Exception):
    """A channel call did not give the answer asked for."""


class ChannelUnavailable(ChannelError):
    """No answer (timeout, connection refused, 5xx after retries): the outcome is unknown, so
    the caller asks again (query) before it repeats anything."""


class MalformedAnswer(ChannelUnavailable):
    """An answer that does not verify (signature, hash) or does not read as the channel's:
    as good as no answer, so the outcome is unknown."""


class ChannelRefused(ChannelError):
    """The channel answered and said no, with its own code."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class BadNotification(ChannelError):
    """Not a notification of this channel: bad signature, bad shape, unknown key. One opaque
    failure for every kind (the sender learns nothing)."""


class StatementUnreadable(ChannelError):
    """The channel's statement is not in its published layout: no line of it is trusted."""


class Connector(Protocol):
    """One channel's protocol. `parse_notification` is pure; the rest go through the executor."""

    channel: Channel

    async def create_payment(self, order: PaymentOrder) -> AppPayment: ...

    async def query(self, out_trade_no: str) -> TradeStatus: ...

    async def close(self, out_trade_no: str) -> None: ...

    async def refund(self, order: RefundOrder) -> RefundStatus: ...

    async def refund_query(self, out_trade_no: str, out_refund_no: str) -> RefundStatus: ...

    def parse_notification(
        self, headers: dict[str, str], body: bytes, content_type: str
    ) -> Notification: ...

    async def statement(self, day: date) -> Statement: ...
