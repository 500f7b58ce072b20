"""The card side of OneCard: APDUs, card cryptography, a software e-purse card, a gate's SAM and
simulator, the HCE virtual card applet, card readers and a command line (`python -m hce`).

Modules: `apdu` (ISO 7816-4 and the e-purse commands), `card_crypto` (diversification, session
keys, MAC, TAC, LUKs), `issuer` (what the gateway computes as the issuer's security module),
`software_card`, `sam`, `terminal` (the gate), `virtual_card` (HCE applet, LUK envelopes),
`readers`, `relay` (the phone's side of an over-the-air load).

This package is a library a phone, a gate and the gateway share: it never imports aiohttp,
asyncpg or redis, does no database I/O, and never reads the clock where a caller can pass the
time in. Only `relay` talks to the network, with the standard library, as a phone does.
"""
