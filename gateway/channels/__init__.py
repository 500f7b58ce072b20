"""Payment channel connectors (Alipay, WeChat Pay, UnionPay) and their sandboxes.

A connector builds requests and parses answers in the channel's own protocol and converts them
to and from the neutral types of `gateway.channels.types`; `gateway.channels.executor` does the
I/O. Connectors know channels, never orders.
"""
