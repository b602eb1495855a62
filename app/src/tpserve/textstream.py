"""Incremental detokenization with stop strings, safe for byte-level BPE (partial UTF-8).

`TextStream.add(token_id)` returns the newly *final* text: text that can no longer turn into a
stop string and holds no half-decoded character. When a stop string appears, the stream stops
and the text before it is final (the stop string itself is not emitted, as in the OpenAI API).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = [s for s in stop if s]
        self._ids: list[int] = []
        self._emitted = 0  # characters of the decoded text already handed out
        self.stopped = False
        self.text = ""  # full final text so far (never includes a stop string)

    def add(self, token_id: int) -> str:
        """Append one token; return the new final text (maybe empty)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        decoded = self._decode(self._ids)
        for stop in self._stop:
            at = decoded.find(stop, max(0, self._emitted - len(stop) + 1))
            if at != -1:
                self.stopped = True
                return self._emit(decoded[:at])
        safe_end = len(decoded)
        while safe_end > self._emitted and decoded[safe_end - 1] == REPLACEMENT:
            safe_end -= 1  # an incomplete multi-byte character: wait for the next token
        hold = 0  # hold back a tail that may still grow into a stop string
        for stop in self._stop:
            for k in range(min(len(stop) - 1, safe_end - self._emitted), hold, -1):
                if decoded[safe_end - k : safe_end] == stop[:k]:
                    hold = k
                    break
        safe_end -= hold
        return self._emit(decoded[:safe_end])

    def flush(self) -> str:
        """At the end of generation: whatever is left (the held-back tail) becomes final."""
        if self.stopped:
            return ""
        return self._emit(self._decode(self._ids))

    def _emit(self, final_text: str) -> str:
        if len(final_text) <= self._emitted:
            return ""
        delta = final_text[self._emitted :]
        self._emitted = len(final_text)
        self.text = final_text
        return delta
