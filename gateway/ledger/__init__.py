"""The double-entry ledger (DESIGN.md section 5): accounts, postings, verification.

Every money movement is one txn of two or more entries summing to zero, posted with
`post()` inside the caller's database transaction, next to the business row that caused it.
"""

from gateway.ledger.accounts import AccountKind, account_balance, open_account
from gateway.ledger.postings import (
    DuplicatePosting,
    FloorBreach,
    LedgerError,
    Leg,
    Posting,
    TxnKind,
    UnknownAccount,
    post,
)

__all__ = [
    "AccountKind",
    "DuplicatePosting",
    "FloorBreach",
    "LedgerError",
    "Leg",
    "Posting",
    "TxnKind",
    "UnknownAccount",
    "account_balance",
    "open_account",
    "post",
]
