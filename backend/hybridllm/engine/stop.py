"""Stop-string handling for incremental text."""
from __future__ import annotations


def find_stop(text: str, new_from: int, stops: tuple[str, ...]) -> int:
    """Index in text where the earliest stop string begins, searching only matches
    that end at or after new_from; -1 if none."""
    best = -1
    longest = max((len(s) for s in stops), default=0)
    lo = max(0, new_from - longest + 1)
    for s in stops:
        i = text.find(s, lo)
        if i != -1 and (best == -1 or i < best):
            best = i
    return best


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing chars of text could start a stop string, so must not be streamed yet."""
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:n]):
                hold = n
                break
    return hold
