"""Object metadata helpers: timestamps as Kubernetes writes them."""

from __future__ import annotations

import datetime

__all__ = ["parse_timestamp"]


def parse_timestamp(text: str) -> float | None:
    """Parse a Kubernetes timestamp into POSIX seconds; ``None`` when it does not parse."""
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()
