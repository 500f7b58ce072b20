"""What `make run` gives a newcomer, end to end and without a browser.

The real `onecard` command runs as `make run` runs it (`keys init`, `migrate`, then `serve` with
`ONECARD_SANDBOXES=true`), on free ports for the gateway and the three sandboxes, against a
fresh scratch database and the test session's Redis prefix. The gateway starts the sandboxes
beside itself, imports their test merchants' credentials and prints where to find them. A rider
signs up and logs in over HTTP and tops up the wallet once per channel; for each order the
test does what a phone's browser would with the channel's pay page: GET
`/sandbox/pay/{token}` for what the gateway handed the phone (one path segment, percent-encoded),
parse the HTML with the standard library for the form, and submit it (its action, its method,
its fields, form-encoded). Every order must reach `credited` and the wallet show the sum. Then
SIGTERM: the gateway exits 0, its sandbox processes are gone, nothing logged an error, and
`onecard ledger verify` is clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yarl

from gateway.channels.types import Channel
from gateway.config import Config
from tests.gateway import identity_helpers as make
from tests.gateway.conftest import scratch_database

AMOUNT_FEN = {Channel.ALIPAY: 2_300, Channel.WECHATPAY: 4_500, Channel.UNIONPAY: 10_000}
COMMAND_TIMEOUT_S = 30.0
START_TIMEOUT_S = 30.0
CREDITED_WITHIN_S = 15.0  # the sandbox notifies at once; the gateway asks only after 30 s
STOP_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 10.0
POLL_S = 0.05
# Three orders per round: under the rider's 20 requests per second (ONECARD_RATE_RIDER_PER_S).
CREDIT_POLL_S = 0.2
LOG_TAIL_CHARS = 3_000


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (the sockets are held together, so no port comes twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def onecard() -> list[str]:
    """The `onecard` script `make run` runs (.venv/bin/onecard), or its module."""
    script = Path(sys.executable).with_name("onecard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


@dataclass
class Run:
    """The environment of a `make run` on free ports, and where its output goes."""

    env: dict[str, str]
    workdir: Path
    port: int
    sandbox_ports: dict[Channel, int]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sandbox_url(self, channel: Channel) -> str:
        return f"http://127.0.0.1:{self.sandbox_ports[channel]}"

    def command(self, *args: str) -> None:
        done = subprocess.run(
            [*onecard(), *args], env=self.env, cwd=self.workdir, capture_output=True, text=True,
            timeout=COMMAND_TIMEOUT_S, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"onecard {' '.join(args)}: {done.stdout}{done.stderr}"

    def serve(self) -> subprocess.Popen[bytes]:
        # Files, not pipes: a full pipe nobody reads would stall the gateway's logging.
        with (
            (self.workdir / "stdout").open("wb") as out,
            (self.workdir / "stderr").open("wb") as err,
        ):
            # Its own process group, as in a terminal: its sandboxes join it, and stay in it
            # even if they outlive it, so the test can always stop them all.
            return subprocess.Popen(
                [*onecard(), "serve"], env=self.env, cwd=self.workdir, stdout=out, stderr=err,
                start_new_session=True,
            )  # fmt: skip

    def output(self, name: str) -> str:
        return (self.workdir / name).read_text(errors="replace")

    def logs(self) -> str:
        return f"\nstdout:\n{self.output('stdout')[-LOG_TAIL_CHARS:]}" + (
            f"\nstderr:\n{self.output('stderr')[-LOG_TAIL_CHARS:]}"
        )


def make_run(config: Config, database_url: str, workdir: Path) -> Run:
    """The settings a newcomer has: the defaults but for the servers, the ports (and the address
    channels notify, which follows the port) and where files go. Nothing ONECARD_ leaks in from
    the shell that runs the tests."""
    port, *others = free_ports(4)
    sandbox_ports = dict(zip(AMOUNT_FEN, others, strict=True))
    env = {name: value for name, value in os.environ.items() if not name.startswith("ONECARD_")}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=config.redis_url,
        ONECARD_REDIS_PREFIX=config.redis_prefix,
        ONECARD_DATA_DIR=str(workdir / ".onecard"),
        ONECARD_KEK_FILE=str(workdir / ".onecard" / "kek"),
        ONECARD_PORT=str(port),
        ONECARD_PUBLIC_URL=f"http://127.0.0.1:{port}",
        ONECARD_SANDBOXES="true",
        ONECARD_SANDBOX_ALIPAY_PORT=str(sandbox_ports[Channel.ALIPAY]),
        ONECARD_SANDBOX_WECHATPAY_PORT=str(sandbox_ports[Channel.WECHATPAY]),
        ONECARD_SANDBOX_UNIONPAY_PORT=str(sandbox_ports[Channel.UNIONPAY]),
    )
    return Run(env, workdir, port, sandbox_ports)


# --------------------------------------------------------------------------- the pay page
@dataclass
class Form:
    action: str
    method: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    submitter: tuple[str, str] | None = None  # the first submit button, when it has a name
    submittable: bool = False


class Page(HTMLParser):
    """The forms of an HTML page and its text, as a browser sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self.text: list[str] = []
        self._open: Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._open = Form(a.get("action", ""), a.get("method", "get").lower() or "get")
            self.forms.append(self._open)
        elif self._open is not None and tag in ("input", "button"):
            self._control(tag, a)

    def _control(self, tag: str, a: dict[str, str]) -> None:
        assert self._open is not None
        kind = a.get("type", "submit" if tag == "button" else "text").lower()
        if kind in ("submit", "image"):
            if not self._open.submittable and a.get("name"):
                self._open.submitter = (a["name"], a.get("value", ""))
            self._open.submittable = True
        elif kind in ("checkbox", "radio"):
            if "checked" in a and a.get("name"):
                self._open.fields.append((a["name"], a.get("value", "on")))
        elif kind not in ("reset", "button", "file") and a.get("name"):
            self._open.fields.append((a["name"], a.get("value", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._open = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def pay_page_url(base_url: str, channel: Channel, pay: dict[str, str]) -> str:
    """The pay page for what the phone was handed: Alipay's order string, WeChat Pay's signed
    app parameters (as its app reads them: `appid=...&sign=...`), UnionPay's `tn`; the token
    is one path segment, so every reserved character in it is escaped."""
    if channel is Channel.ALIPAY:
        token = pay["order_string"]
    elif channel is Channel.WECHATPAY:
        token = urllib.parse.urlencode(pay)
    else:
        token = pay["tn"]
    return f"{base_url}/sandbox/pay/{urllib.parse.quote(token, safe='')}"


async def pay_as_a_browser(http: aiohttp.ClientSession, page_url: str, amount_fen: int) -> None:
    # encoded=True: the path goes on the wire byte for byte, as a browser sends it.
    async with http.get(yarl.URL(page_url, encoded=True)) as response:
        html = await response.text()
        assert response.status == 200, f"GET {page_url[:120]}...: {response.status} {html}"
        assert response.content_type == "text/html", response.content_type
    page = Page()
    page.feed(html)
    page.close()
    assert len(page.forms) == 1, f"the pay page has {len(page.forms)} forms: {html}"
    form = page.forms[0]
    assert form.submittable, f"the pay page's form has no submit button: {html}"
    yuan = f"{amount_fen // 100}.{amount_fen % 100:02d}"
    assert yuan in "".join(page.text), f"the pay page does not show ¥{yuan}: {html}"
    async with submit(http, page_url, form) as paid:
        text = await paid.text()
        assert paid.status == 200, f"submitting the pay page: {paid.status} {text}"
    done = Page()
    done.feed(text)
    assert "Paid" in "".join(done.text), f"the page after paying: {text}"


def submit(http: aiohttp.ClientSession, page_url: str, form: Form) -> Any:
    """The form sent as a browser sends it: to its action (relative to the page), with its
    method, its fields and the button pressed, application/x-www-form-urlencoded."""
    action = urllib.parse.urljoin(page_url, form.action or page_url)
    fields = form.fields + ([form.submitter] if form.submitter else [])
    body = urllib.parse.urlencode(fields)
    if form.method == "post":
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Referer": page_url}
        return http.post(yarl.URL(action, encoded=True), data=body.encode(), headers=headers)
    assert form.method == "get", f"a form method no browser knows: {form.method}"
    url = urllib.parse.urlunsplit(urllib.parse.urlsplit(action)._replace(query=body))
    return http.get(yarl.URL(url, encoded=True), headers={"Referer": page_url})


# --------------------------------------------------------------------------- the gateway
async def until_up(run: Run, gateway: subprocess.Popen[bytes], http: aiohttp.ClientSession) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(f"{run.url}/readyz") as response:
                if response.status == 200:
                    return
        exited = gateway.poll()
        assert exited is None, f"`onecard serve` exited with {exited} while starting{run.logs()}"
        assert time.monotonic() < deadline, (
            f"`onecard serve` not ready within {START_TIMEOUT_S} s{run.logs()}"
        )
        await asyncio.sleep(POLL_S)


def sandbox_processes(gateway: subprocess.Popen[bytes], run: Run) -> list[psutil.Process]:
    children = psutil.Process(gateway.pid).children(recursive=True)
    found = [child for child in children if "sandbox" in child.cmdline()]
    by_channel = {
        channel: [p for p in found if p.cmdline()[-3:] == [channel.value, "--port", str(port)]]
        for channel, port in run.sandbox_ports.items()
    }
    assert all(len(procs) == 1 for procs in by_channel.values()), (
        f"not one sandbox process per channel: {[p.cmdline() for p in children]}"
    )
    return found


async def stop(run: Run, gateway: subprocess.Popen[bytes], sandboxes: list[psutil.Process]) -> None:
    """SIGTERM, as a service manager stops it: exit 0, no process left behind."""
    gateway.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(gateway.wait, STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no exit within {STOP_TIMEOUT_S} s of SIGTERM{run.logs()}") from None
    assert code == 0, f"`onecard serve` exited with {code} on SIGTERM{run.logs()}"
    # The gateway waited for its children before it exited: nothing should be left to wait for.
    _, alive = await asyncio.to_thread(psutil.wait_procs, sandboxes, 1.0)
    assert alive == [], f"sandboxes outlived the gateway: {[p.cmdline() for p in alive]}"


@contextlib.contextmanager
def killed_at_the_end(gateway: subprocess.Popen[bytes]) -> Iterator[None]:
    """Whatever happens, nothing this test started keeps running: the gateway's whole process
    group (the gateway and its sandboxes) is killed."""
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(gateway.pid, signal.SIGKILL)
        gateway.wait(STOP_TIMEOUT_S)


# --------------------------------------------------------------------------- the rider
async def rider(http: aiohttp.ClientSession, url: str) -> make.RiderLogin:
    credentials = {"phone": make.new_phone(), "password": make.PASSWORD}
    async with http.post(f"{url}/v1/riders", json=credentials) as created:
        assert created.status == 201, f"sign-up: {await created.text()}"
        rider_id = (await created.json())["id"]
    async with http.post(f"{url}/v1/sessions", json=credentials) as login:
        assert login.status == 201, f"log-in: {await login.text()}"
        body = await login.json()
    return make.RiderLogin(
        rider_id, credentials["phone"], body["access_token"], body["refresh_token"],
        body["session_id"],
    )  # fmt: skip


async def top_up(
    http: aiohttp.ClientSession, url: str, login: make.RiderLogin, channel: Channel
) -> dict[str, Any]:
    body = {"target": {"wallet": True}, "amount_fen": AMOUNT_FEN[channel], "channel": channel.value}
    headers = {**login.auth, "Idempotency-Key": f"run-{channel.value}-{secrets.token_hex(8)}"}
    async with http.post(f"{url}/v1/topups", json=body, headers=headers) as response:
        assert response.status == 201, f"{channel.value} top-up: {await response.text()}"
        order: dict[str, Any] = await response.json()
    assert order["status"] == "paying", order
    return order


async def until_credited(
    http: aiohttp.ClientSession, run: Run, login: make.RiderLogin, orders: dict[Channel, int]
) -> None:
    deadline = time.monotonic() + CREDITED_WITHIN_S
    status: dict[Channel, str] = {}
    while True:
        for channel, order_id in orders.items():
            if status.get(channel) == "credited":
                continue
            async with http.get(f"{run.url}/v1/topups/{order_id}", headers=login.auth) as got:
                assert got.status == 200, f"GET top-up {order_id}: {await got.text()}"
                status[channel] = (await got.json())["status"]
            assert status[channel] in ("paying", "paid", "credited"), (
                f"{channel.value} top-up {order_id} is {status[channel]}{run.logs()}"
            )
        if set(status.values()) == {"credited"}:
            return
        assert time.monotonic() < deadline, (
            f"not all credited within {CREDITED_WITHIN_S} s: {status}{run.logs()}"
        )
        await asyncio.sleep(CREDIT_POLL_S)


# --------------------------------------------------------------------------- the test
async def test_make_run_tops_up_through_every_sandbox_pay_page(
    config: Config, server_urls: tuple[str, str], tmp_path: Path
) -> None:
    async with scratch_database(server_urls[0], "onecard_run", migrated=False) as database_url:
        run = make_run(config, database_url, tmp_path)
        run.command("keys", "init")
        run.command("migrate")
        gateway = run.serve()
        with killed_at_the_end(gateway):
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                await until_up(run, gateway, http)
                sandboxes = sandbox_processes(gateway, run)
                await assert_credential_urls_printed(http, run)
                await top_up_every_channel(http, run)
            await stop(run, gateway, sandboxes)
        assert_no_error_logged(run)
        run.command("ledger", "verify")


async def assert_credential_urls_printed(http: aiohttp.ClientSession, run: Run) -> None:
    printed = run.output("stdout").splitlines()
    for channel in run.sandbox_ports:
        line = f"{channel.value} sandbox: {run.sandbox_url(channel)}/sandbox/credentials"
        assert line in printed, f"{line!r} not printed{run.logs()}"
        async with http.get(line.split(": ", 1)[1]) as response:
            assert response.status == 200, f"{line}: {await response.text()}"
            assert isinstance(await response.json(), dict)


def assert_no_error_logged(run: Run) -> None:
    """A newcomer's first run logs no error and no traceback (the gateway's and the sandboxes'
    logs: one JSON object per line on stderr)."""
    bad = [
        line for line in run.output("stderr").splitlines()
        if not line.startswith("{") or json.loads(line).get("level") in ("ERROR", "CRITICAL")
    ]  # fmt: skip
    assert bad == [], "\n".join(bad)[-LOG_TAIL_CHARS:]


async def top_up_every_channel(http: aiohttp.ClientSession, run: Run) -> None:
    login = await rider(http, run.url)
    orders: dict[Channel, int] = {}
    for channel in AMOUNT_FEN:
        order = await top_up(http, run.url, login, channel)
        orders[channel] = order["id"]
        page_url = pay_page_url(run.sandbox_url(channel), channel, order["pay"])
        await pay_as_a_browser(http, page_url, AMOUNT_FEN[channel])
    await until_credited(http, run, login, orders)
    async with http.get(f"{run.url}/v1/wallet", headers=login.auth) as response:
        assert response.status == 200, await response.text()
        wallet = await response.json()
    assert wallet["balance_fen"] == sum(AMOUNT_FEN.values()), wallet
