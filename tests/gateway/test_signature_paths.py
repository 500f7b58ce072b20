"""Partner and terminal signatures cover the path exactly as sent, percent-escapes and all.

aiohttp decodes `request.path`; a client signs the bytes it puts on the wire. The requests here
are sent with `yarl.URL(..., encoded=True)` so that the client sends the escapes unchanged
(yarl would otherwise decode `%70` to `p` before sending).
"""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from yarl import URL

from gateway.auth.signatures import canonical_request, partner_signature, sign_partner_request
from gateway.config import Config
from tests.gateway import identity_helpers as make

ClientT = TestClient[Any, Any]


def escape_first(text: str) -> str:
    """`text` with its first character percent-encoded (upper-case hex), e.g. pk_… -> %70k_…"""
    return f"%{ord(text[0]):02X}{text[1:]}"


async def get(client: ClientT, raw_path: str, headers: dict[str, str]) -> Any:
    return await client.get(URL(raw_path, encoded=True), headers=headers)


async def error_code(response: Any) -> str:
    return (await response.json())["error"]["code"]


def test_the_client_helper_signs_the_path_as_given() -> None:
    for path in ("/v1/%7Ea%2Fb", "/v1/%7ea%2fb", "/v1/~a/b"):
        headers = sign_partner_request("pk_x", "s", "GET", path + "?q=1", timestamp=1, nonce="n")
        canonical = canonical_request("GET", path, [("q", "1")], "1", "n", b"")
        assert headers["OC-Signature"] == partner_signature("s", canonical), path


async def test_a_partner_signs_the_encoded_path_it_sends(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    partner = await make.partner(pool, config)
    decoded = f"/v1/partners/{partner.key_id}"
    encoded = f"/v1/partners/{escape_first(partner.key_id)}"
    sent = encoded + "?b=%32&a=1%20x"

    response = await get(client, sent, partner.sign("GET", sent))
    assert response.status == 200, await response.text()
    assert (await response.json())["key_id"] == partner.key_id

    for signed in (decoded, decoded + "?b=%32&a=1%20x", encoded.lower()):
        response = await get(client, sent, partner.sign("GET", signed))
        assert response.status == 401, signed
        assert await error_code(response) == "bad_signature", signed
    # And the other way round: signed over the escapes, sent decoded.
    response = await get(client, decoded, partner.sign("GET", encoded))
    assert response.status == 401 and await error_code(response) == "bad_signature"


async def test_a_partner_path_with_non_ascii_escapes(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    """Upper- and lower-case escapes are different bytes on the wire, so different signatures."""
    partner = await make.partner(pool, config)
    sent = "/v1/partners/pk_caf%C3%A9"
    # The signature holds, so the answer is the route's own: not this partner's record.
    response = await get(client, sent, partner.sign("GET", sent))
    assert response.status == 404 and await error_code(response) == "not_found"
    for signed in ("/v1/partners/pk_café", "/v1/partners/pk_caf%c3%a9"):
        response = await get(client, sent, partner.sign("GET", signed))
        assert response.status == 401, signed
        assert await error_code(response) == "bad_signature", signed


async def test_a_terminal_signs_the_encoded_path_it_sends(
    client: ClientT, pool: asyncpg.Pool
) -> None:
    terminal = await make.terminal(pool)
    decoded = f"/v1/terminals/{terminal.id}"
    encoded = f"/v1/terminals/{escape_first(terminal.id)}"

    response = await get(client, encoded, terminal.sign("GET", encoded))
    assert response.status == 200, await response.text()
    assert (await response.json())["id"] == terminal.id
    whoami = "/v1/%77hoami"
    response = await get(client, whoami, terminal.sign("GET", whoami))
    assert response.status == 200 and (await response.json())["kind"] == "terminal"

    for sent, signed in ((encoded, decoded), (whoami, "/v1/whoami"), (decoded, encoded)):
        response = await get(client, sent, terminal.sign("GET", signed))
        assert response.status == 401, (sent, signed)
        assert await error_code(response) == "bad_signature", (sent, signed)
