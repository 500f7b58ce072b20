"""The double-entry ledger (DESIGN.md section 5): accounts, postings, verification.

Every money movement is one txn of two or more entries summing to zero, posted with
`post()` inside the caller's database transaction, next to the business row that caused it;
a batch of two-leg txns (a gate's taps) with `post_batch()`, in one statement.
"""

from gateway.ledger.accounts import AccountKind, account_balance, open_account
from gateway.ledger.postings import (
    DuplicatePosting,
    FloorBreach,
    LedgerError,
    Leg,
    Posting,
    Transfer,
    TxnKind,
    UnknownAccount,
    accounts_of_owners,
    post,
    post_batch,
    reserve_txn_ids,
)

__all__ = [
    "AccountKind",
    "DuplicatePosting",
    "FloorBreach",
    "LedgerError",
    "Leg",
    "Posting",
    "Transfer",
    "TxnKind",
    "UnknownAccount",
    "account_balance",
    "accounts_of_owners",
    "open_account",
    "post",
    "post_batch",
    "reserve_txn_ids",
]
