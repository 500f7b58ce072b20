"""A first peak-hour scenario: riders open the app, log in and look at their wallet.

Run the gateway in one terminal (`make run`) and `make loadtest` in another: 50 riders for 60 s
by default (`LOADTEST_ARGS='-u 200 -r 20 -t 5m' make loadtest` for others), against
ONECARD_HOST:ONECARD_PORT as the gateway reads them (127.0.0.1:8080 unless set). For the web UI:
`locust -f loadtest/locustfile.py` (the same host unless `--host` names another).

Each simulated rider signs up once with its own phone number (a number taken by an earlier run
just logs in), then keeps a session: it reads the wallet and the statement, and refreshes its
token as the app does. Every simulated rider calls from the same address, so a default gateway
lets its sign-ups and logins through slowly (5 a second, after a burst of 30): a rider answered
429 waits for Retry-After and tries again, up to RETRY_COUNT_MAX times, and a rider that still
cannot sign up or log in stops. Every refusal is a failure in locust's table, named by status and
error code. To measure the wallet rather than the limit, lift the limit for the run:
`ONECARD_RATE_PUBLIC_PER_S=10000 ONECARD_RATE_PUBLIC_BURST=10000 make run`. The morning-rush
scenarios (top-ups, taps, QR rides) join this file as those capabilities land.
"""

from __future__ import annotations

import itertools
import os
import random
from typing import Any

import gevent
from locust import between, task
from locust.contrib.fasthttp import FastHttpUser, FastResponse

PASSWORD = "load test rider password"  # noqa: S105 (every simulated rider's, not a secret)
RETRY_COUNT_MAX = 5  # 429s to a sign-up or a log-in waited out, per rider and call
RETRY_WAIT_S_MAX = 30  # a longer Retry-After (the failed-login lockout) is not waited out
RETRY_JITTER_S_MAX = 1.0  # so that the riders refused together do not all retry together
# The gateway's own settings, so that a run finds the gateway `make run` started (--host wins).
HOST = "http://{}:{}".format(
    os.environ.get("ONECARD_HOST", "127.0.0.1"), os.environ.get("ONECARD_PORT", "8080")
)
TOKENS = ("access_token", "refresh_token")
_phones = itertools.count(random.randrange(10**7))


def _answer(response: FastResponse) -> dict[str, Any]:
    """The JSON object of an answer, or {} (no answer, not JSON, not an object)."""
    try:
        body = response.json()
    except (ValueError, TypeError):
        return {}
    return body if isinstance(body, dict) else {}


def _error_code(answer: dict[str, Any]) -> str | None:
    error = answer.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _refusal(response: FastResponse, code: str | None) -> str:
    """What went wrong, in words that stay the same from rider to rider (locust groups them)."""
    if response.status_code == 0:
        return f"no answer: {type(getattr(response, 'error', None)).__name__}"
    return f"{response.status_code} {code or 'unexpected answer'}"


def _retry_after_s(response: FastResponse) -> int | None:
    """The wait a 429 asks for, when it is short enough to wait out."""
    value = (response.headers or {}).get("Retry-After") or ""
    if response.status_code != 429 or not value.isdigit() or int(value) > RETRY_WAIT_S_MAX:
        return None
    return int(value)


class Rider(FastHttpUser):
    host = HOST
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.phone = f"+86137{os.getpid() % 100:02d}{next(_phones) % 10**6:06d}"
        credentials = {"phone": self.phone, "password": PASSWORD}
        # 409 phone_taken: an earlier run signed this number up, with the same password.
        signed_up = self._post_public("/v1/riders", credentials, fine_error="phone_taken")
        tokens = None
        if signed_up is not None:
            tokens = self._post_public("/v1/sessions", credentials, needs=TOKENS)
        if tokens is None:
            # Stopped before its first task, locust ends the rider without a traceback; why it
            # stopped is already counted as a failure of the request that was refused.
            self.stop()
            return
        self._keep(tokens)

    def _post_public(
        self,
        path: str,
        body: dict[str, str],
        fine_error: str | None = None,
        needs: tuple[str, ...] = (),
    ) -> dict[str, Any] | None:
        """POST to a route limited per address, waiting out short 429s; the answer, or None."""
        for attempt in range(RETRY_COUNT_MAX + 1):
            with self.client.post(path, json=body, name=path, catch_response=True) as response:
                answer = _answer(response)
                code = _error_code(answer)
                if 200 <= response.status_code < 300 and all(k in answer for k in needs):
                    response.success()
                    return answer
                if fine_error is not None and code == fine_error:
                    response.success()
                    return answer
                wait_s = _retry_after_s(response) if attempt < RETRY_COUNT_MAX else None
                outcome = "rider stopped" if wait_s is None else "retried"
                response.failure(f"{_refusal(response, code)}, {outcome}")
            if wait_s is None:
                return None
            gevent.sleep(wait_s + random.uniform(0, RETRY_JITTER_S_MAX))
        return None

    def _keep(self, tokens: dict[str, Any]) -> None:
        self.refresh_token = tokens["refresh_token"]
        self.headers = {"Authorization": f"Bearer {tokens['access_token']}"}

    @task(10)
    def wallet(self) -> None:
        self.client.get("/v1/wallet", headers=self.headers, name="/v1/wallet")

    @task(3)
    def statement(self) -> None:
        self.client.get(
            "/v1/wallet/transactions?limit=20", headers=self.headers, name="/v1/wallet/transactions"
        )

    @task(1)
    def refresh(self) -> None:
        # Refreshes share the per-address limit too; a refused one keeps the current tokens.
        response = self.client.post(
            "/v1/sessions/refresh", json={"refresh_token": self.refresh_token},
            name="/v1/sessions/refresh",
        )  # fmt: skip
        tokens = _answer(response)
        if response.status_code == 200 and all(k in tokens for k in TOKENS):
            self._keep(tokens)
