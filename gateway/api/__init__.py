"""HTTP route tables, one module per area, with their request/response schemas; handlers stay
thin. Which tables the gateway serves is said once, in `gateway/areas.py`."""
