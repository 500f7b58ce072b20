"""Every tap (QR ride, later virtual card and physical card purchase): one store, one ingest
path, one deny list (DESIGN.md section 7, "Taps").

`taps` owns the `taps` and `deny_list` tables. `deny_list` is a leaf (the QR codes area writes
to it when it revokes a device or lifts an account); nothing here imports aiohttp except the
service's setup.
"""
