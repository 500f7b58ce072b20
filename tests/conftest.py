"""Test-wide settings. Fixtures that need PostgreSQL or Redis live in tests/gateway/conftest.py,
so the library tests (tests/hce, tests/qr) run without any server."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=100, deadline=None)
settings.register_profile(
    "fuzz", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
