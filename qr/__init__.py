"""Dynamic QR ride codes: wire format, signing, offline verification (the gate SDK), phone side.

`shared/QR_FORMAT.md` is the byte-exact contract. The modules, one concept each:

- `qr.format`  encode and decode certificates and both code types (bytes and text form)
- `qr.signing` ECDSA P-256 raw signatures, compressed keys, issuing, proof of possession
- `qr.verify`  the gate's `verify(...) -> Verdict`, replay and certificate caches
- `qr.phone`   what the rider app does offline: make codes with its device key
- `qr.render`  PNG / SVG / terminal images (imported on its own: it pulls in qrcode and pillow)
- `qr.reasons` the catalogue of refusal reasons

Import from the modules (`from qr.verify import verify`); the package itself re-exports nothing,
so `qr.verify` always names the module.

This package is used by phones, gates and the gateway alike: it must never import aiohttp,
asyncpg or redis, and never read the clock (time is always passed in).
"""
