"""Card readers: anything that carries one APDU to a card and brings its answer back.

`CardReader` is the one interface the gate, the CLI and the gateway's tools use. A
`SoftwareCard` or `VirtualCard` is itself a reader (its `transmit` is the card); `PcscReader`
talks to a real contactless reader through pyscard (`pip install onecard[pcsc]`), imported
only when a `PcscReader` is created.

This module must never import pyscard at import time, never interpret the APDUs it carries
(beyond ISO framing for T=0 retries), and never import aiohttp, asyncpg or redis.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from hce.apdu import ApduError, CommandApdu

__all__ = ["CardReader", "PcscReader", "ReaderError"]


@runtime_checkable
class CardReader(Protocol):
    def transmit(self, capdu: bytes) -> bytes:
        """Send one command APDU, return `data ‖ SW1 SW2`."""
        ...


class ReaderError(Exception):
    """The reader failed (no reader, no card, communication error)."""


class PcscReader:
    """A PC/SC reader (via pyscard). Connects on creation; `close()` when done.

    T=0 cards answer `61 xx` (more data) and `6C xx` (wrong Le); this reader follows both so
    callers always see the final answer.
    """

    def __init__(self, name_contains: str = "") -> None:
        try:
            from smartcard.System import readers  # type: ignore[import-not-found, unused-ignore]
        except ImportError as exc:
            raise ReaderError("PC/SC needs pyscard: pip install 'onecard[pcsc]'") from exc
        found = [r for r in readers() if name_contains.lower() in str(r).lower()]
        if not found:
            raise ReaderError(f"no PC/SC reader matching {name_contains!r}")
        self.name = str(found[0])
        try:
            self._connection: Any = found[0].createConnection()
            self._connection.connect()
        except Exception as exc:  # pyscard raises its own hierarchy; callers see one error
            raise ReaderError(f"cannot connect to the card on {self.name}: {exc}") from exc

    def transmit(self, capdu: bytes) -> bytes:
        data, sw1, sw2 = self._raw(capdu)
        if sw1 == 0x6C:  # wrong Le: resend with the Le the card asked for
            try:
                retry = replace(CommandApdu.from_bytes(capdu), le=sw2 or 256).to_bytes()
            except ApduError as exc:
                raise ReaderError(f"card asked for a new Le on a malformed APDU: {exc}") from exc
            data, sw1, sw2 = self._raw(retry)
        out = bytes(data)
        while sw1 == 0x61:  # more data: GET RESPONSE
            data, sw1, sw2 = self._raw(bytes((0x00, 0xC0, 0x00, 0x00, sw2)))
            out += bytes(data)
        return out + bytes((sw1, sw2))

    def _raw(self, capdu: bytes) -> tuple[list[int], int, int]:
        try:
            data, sw1, sw2 = self._connection.transmit(list(capdu))
        except Exception as exc:
            raise ReaderError(f"transmit failed: {exc}") from exc
        return list(data), int(sw1), int(sw2)

    def close(self) -> None:
        self._connection.disconnect()
