"""HTTP route tables, one per area, and their request/response schemas. Handlers stay thin."""

from gateway.api.routing import RouteTable


def route_tables() -> list[RouteTable]:
    """Every area's table; a new area adds its import here."""
    from gateway.api import access, qr, riders, system

    return [system.routes, riders.routes, access.routes, qr.routes]
