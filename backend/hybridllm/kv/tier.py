"""Tier: where a request's KV lives. The one tier type every layer uses (no torch)."""
from __future__ import annotations

import enum


class Tier(str, enum.Enum):
    DEVICE = "device"
    HOST = "host"
