"""Text out of token ids as they arrive: stop strings and pieces that are safe to show (never half a character)."""

from __future__ import annotations

from collections.abc import Sequence

from .tokenizer import Tokenizer


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)


def _held_back(text: str, stop_strings: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could still be the start of a stop string."""
    hold = 0
    for s in stop_strings:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return hold


class TextStream:
    """Turns a growing list of token ids into text pieces that are safe to show now.

    A byte-level BPE token can hold part of a multi-byte UTF-8 character; decoding such a prefix gives U+FFFD, so
    text is only released once it no longer ends in an incomplete character. Text that could be the start of a
    stop string is held back until it is known not to be one. The pieces join to the final text exactly.
    Text comes from Tokenizer.decode, so WordPiece pieces follow its spacing rule (no space between CJK
    characters), and a Chinese character split over several byte-level tokens appears only once complete.
    """

    def __init__(self, tokenizer: Tokenizer, stop_strings: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.ids: list[int] = []
        self.emitted = ""
        self.stopped = False

    def text(self) -> str:
        """The text so far, cut before a stop string (setting ``stopped`` when one is found)."""
        text, hit = cut_at_stop(self.tokenizer.decode(self.ids), self.stop_strings)
        self.stopped |= hit
        return text

    def push(self, ids: Sequence[int]) -> str:
        """Add tokens; return the newly showable text ('' when nothing is safe to show yet)."""
        self.ids.extend(int(i) for i in ids)
        text = self.text()
        if self.stopped:
            return self._release(text)
        safe = text.rstrip("\ufffd")
        return self._release(safe[:len(safe) - _held_back(safe, self.stop_strings)])

    def finish(self) -> str:
        """Whatever remains once no more tokens will come."""
        return self._release(self.text())

    def _release(self, safe: str) -> str:
        # Decoders that rewrite earlier text (e.g. WordPiece clean-up) could break the prefix; then wait.
        if len(safe) <= len(self.emitted) or not safe.startswith(self.emitted):
            return ""
        piece, self.emitted = safe[len(self.emitted):], safe
        return piece
