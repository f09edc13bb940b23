"""Figures as people read them, the same in `tacorectl` and on the dashboard (whose script,
static/dashboard.js, follows the same rules for the values it refreshes)."""

from __future__ import annotations


def duration(seconds) -> str:
    """12.5s, 3m07s, 5h02m, 3d04h; "-" when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours < 48 else f"{hours // 24}d{hours % 24:02d}h"
