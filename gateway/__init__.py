"""OneCard Gateway: mobile top-up, over-the-air card loading, HCE and QR rides for a city card."""

__version__ = "0.1.0"
