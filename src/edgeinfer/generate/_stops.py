"""Stop strings over a stream of text pieces.

A stop string can arrive split across tokens (``"\\n\\n"`` as two ``"\\n"``), so the text that
could still be the start of one is held back until the next piece settles it: the caller
sees exactly the text a non-streaming generation returns, never a stop string's prefix it
has to take back.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["StopFinder"]


class StopFinder:
    """Feed text pieces; get the text safe to emit, and whether a stop string was met."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self._held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text that can be emitted now (possibly empty). After a stop, always empty."""
        if self.stopped:
            return ""
        text = self._held + piece
        if not self.stops:
            self._held = ""
            return text
        first = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if first >= 0:
            self.stopped = True
            self._held = ""
            return text[:first]
        keep = 0  # longest tail of text that begins some stop string
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), keep, -1):
                if text.endswith(s[:n]):
                    keep = n
                    break
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What was held back, once the generation ended without meeting a stop string."""
        held, self._held = ("" if self.stopped else self._held), ""
        return held
