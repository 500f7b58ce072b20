"""The OTA area's commands: `onecard keys import-card-masters | rotate-card-masters |
show-card-masters` (gateway/ota/keys.py) and `onecard phone load` (gateway/ota/phone.py)."""

from __future__ import annotations

import argparse

from gateway.command import SubParsers
from gateway.ota import keys, phone


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    keys.register(sub)
    phone.register(sub)
