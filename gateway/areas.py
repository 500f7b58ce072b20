"""The registry: one entry per area of the gateway, in the order their setups run.

Adding an area: its package, one line here, its migration, its block of `gateway/errors.py`.
`create_app` installs every area's routes, runs its setup and its jobs; `onecard` adds its
commands; `onecard ledger verify` runs its checks.
"""

from __future__ import annotations

from gateway import idempotency, wallet
from gateway.api import access, qr, riders, system
from gateway.api import ota as ota_routes
from gateway.api import partners as partner_routes
from gateway.api import taps as taps_routes
from gateway.api import topups as topups_routes
from gateway.api import wallet as wallet_routes
from gateway.area import Area, LedgerCheck
from gateway.auth import commands as auth_commands
from gateway.auth import service as identity
from gateway.channels import commands as channel_commands
from gateway.channels import service as channels
from gateway.ledger.verify import CHECKS as LEDGER_CHECKS
from gateway.ota import checks as ota_checks
from gateway.ota import commands as ota_commands
from gateway.ota import service as ota
from gateway.qr_codes import commands as qr_commands
from gateway.qr_codes import service as qr_codes
from gateway.taps import service as taps
from gateway.topups import checks as topup_checks
from gateway.topups import service as topups
from gateway.webhooks import service as webhooks

AREAS: tuple[Area, ...] = (
    Area("platform", (system.routes,), jobs=(idempotency.PURGE_JOB,), ledger_checks=LEDGER_CHECKS),
    Area("identity", (riders.routes, access.routes), identity.setup, auth_commands.register,
         (identity.RELOAD_TOKEN_KEYS,)),
    Area("wallet", (wallet_routes.routes,), wallet.setup),
    Area("qr_codes", (qr.routes,), qr_codes.setup, qr_commands.register),
    Area("taps", (taps_routes.routes,), taps.setup, ledger_checks=taps.LEDGER_CHECKS),
    Area("channels", (), channels.setup, channel_commands.register),
    Area("topups", (topups_routes.routes, partner_routes.routes), topups.setup,
         jobs=(topups.RECONCILE,), ledger_checks=topup_checks.LEDGER_CHECKS),
    Area("webhooks", (partner_routes.webhook_routes,), webhooks.setup, jobs=webhooks.JOBS),
    Area("ota", (ota_routes.routes,), ota.setup, ota_commands.register,
         (ota.RELOAD_CARD_KEYS, ota.REFUND_UNLOADED),
         ota_checks.LEDGER_CHECKS),
)  # fmt: skip


def ledger_checks() -> list[LedgerCheck]:
    """Every check `onecard ledger verify` runs: the ledger's own, then each area's."""
    return [check for area in AREAS for check in area.ledger_checks]
