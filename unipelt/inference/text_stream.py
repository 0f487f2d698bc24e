"""Token ids to text pieces for streaming: hold back what may still change, and end at a stop text.

Decoding a token alone can give half a character (byte-level tokenizers split UTF-8 sequences) or the start of
a stop text that the next tokens complete. So the generated ids are decoded whole after every token and only
the part that can no longer change is released: not a trailing replacement character, not a tail that is the
beginning of some stop text. A stop text found in the output ends it there, without the stop text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class TextStream:
    """The text of one generation, released piece by piece (see the module docstring)."""

    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.sent = 0  # characters released so far
        self.text = ""

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def push(self, token: int) -> tuple[str, bool]:
        """Add a generated token: (text now safe to release, whether a stop text ended the output)."""
        self.ids.append(token)
        self.text = text = self._decode()
        longest = max((len(s) for s in self.stops), default=0)
        if longest:
            start = max(0, self.sent - longest + 1)
            hits = [i for i in (text.find(s, start) for s in self.stops) if i >= 0]
            if hits:
                end = min(hits)
                piece, self.sent = text[self.sent : end], end
                self.text = text[:end]
                return piece, True
        safe = len(text.rstrip("\ufffd"))
        for size in range(min(longest - 1, safe - self.sent), 0, -1):
            tail = text[safe - size : safe]
            if any(s.startswith(tail) for s in self.stops):
                safe -= size
                break
        piece, self.sent = text[self.sent : safe], max(self.sent, safe)
        return piece, False

    def finish(self) -> str:
        """Whatever is still held back, once the generation has ended without a stop text."""
        piece, self.sent = self.text[self.sent :], len(self.text)
        return piece
