"""A first peak-hour scenario: riders open the app, log in and look at their wallet.

Run the gateway in one terminal and `make loadtest` in another (50 riders for 60 s by default),
or `locust -f loadtest/locustfile.py --host http://127.0.0.1:8080` for the web UI. Every
simulated rider calls from the same address, so lift the per-address limit on sign-ups and
logins for the run: `ONECARD_RATE_PUBLIC_PER_S=10000 ONECARD_RATE_PUBLIC_BURST=10000 make run`. Each
simulated rider signs up once with its own phone number, then keeps a session: it reads the
wallet and the statement, and refreshes its token as the app does. The morning-rush scenarios
(top-ups, taps, QR rides) join this file as those capabilities land.
"""

from __future__ import annotations

import itertools
import os
import random

from locust import HttpUser, between, task

PASSWORD = "load test rider password"
_phones = itertools.count(random.randrange(10**7))


class Rider(HttpUser):
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.phone = f"+86137{os.getpid() % 100:02d}{next(_phones) % 10**6:06d}"
        credentials = {"phone": self.phone, "password": PASSWORD}
        self.client.post("/v1/riders", json=credentials, name="/v1/riders")
        response = self.client.post("/v1/sessions", json=credentials, name="/v1/sessions")
        tokens = response.json()
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
        response = self.client.post(
            "/v1/sessions/refresh", json={"refresh_token": self.refresh_token},
            name="/v1/sessions/refresh",
        )  # fmt: skip
        if response.status_code == 200:
            tokens = response.json()
            self.refresh_token = tokens["refresh_token"]
            self.headers = {"Authorization": f"Bearer {tokens['access_token']}"}
