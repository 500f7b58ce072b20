"""Over-the-air card loading: the issuer's security module and the load sessions."""
