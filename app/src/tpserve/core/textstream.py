"""Incremental detokenization with stop strings, safe for byte-level BPE (partial UTF-8).

`TextStream.add(token_id)` returns the newly *final* text: text that can no longer turn into a
stop string and holds no half-decoded character. When a stop string appears, the stream stops
and the text before it is final (the stop string itself is not emitted, as in the OpenAI API).

Cost per token is O(1) in the output length: only a small window of token ids is decoded each
time (prefix/read offsets, as vLLM and TGI do). The window [prefix, read) is the last chunk of
tokens that decoded to complete characters; [read, end) are tokens not yet decoded to complete
characters (a multi-byte UTF-8 character split across tokens). The text of [read, end) is
`decode(ids[prefix:])` minus `decode(ids[prefix:read])`; once it ends in a complete character
it becomes stable and the offsets move forward. For decoders where decoding two pieces split at
a character boundary equals decoding the whole (byte-level BPE: GPT-2, Qwen, Llama 3, ...; any
tokenizer with `clean_up_tokenization_spaces=False`) the streamed pieces and the final text are
exactly those of `ReferenceTextStream`, which re-decodes the whole output on every token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(
        self,
        decode: Callable[[list[int]], str],
        stop: Sequence[str] = (),
        single_cache: dict[int, str] | None = None,
    ) -> None:
        """`single_cache`: decode([id]) by id, shared by the streams of one decode function."""
        self._decode = decode
        self._single = {} if single_cache is None else single_cache
        self._stop = [s for s in stop if s]
        self._keep = max((len(s) for s in self._stop), default=1) - 1  # context a stop may reach back
        self._ids: list[int] = []
        self._prefix = 0  # token offsets of the decode window (see the module docstring)
        self._read = 0
        self._prefix_text = ""  # decode(ids[prefix:read])
        # Decoded text from absolute character position _base up to the end of the stable text.
        # Everything before _base is already emitted; _buf keeps the last `_keep` emitted
        # characters (a stop string may start there) plus the stable text not emitted yet.
        self._buf = ""
        self._base = 0
        self._emitted = 0  # characters of the decoded text already handed out
        self._pieces: list[str] = []
        self.stopped = False

    @property
    def text(self) -> str:
        """Full final text so far (never includes a stop string)."""
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def add(self, token_id: int) -> str:
        """Append one token; return the new final text (maybe empty)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        window = self._decode(self._ids[self._prefix :])
        pending = window[len(self._prefix_text) :]
        if pending and not pending.endswith(REPLACEMENT) and window.startswith(self._prefix_text):
            # complete characters: stable from now on; move the window forward
            self._buf += pending
            self._prefix, self._read = self._read, len(self._ids)
            self._prefix_text = self._decode_window(self._ids[self._prefix :])
            pending = ""
        decoded = self._buf + pending  # == full decode of ids from character _base on
        base = self._base
        for stop in self._stop:
            at = decoded.find(stop, max(0, self._emitted - len(stop) + 1 - base))
            if at != -1:
                self.stopped = True
                return self._emit(decoded, at)
        safe_end = len(decoded)
        while safe_end + base > self._emitted and decoded[safe_end - 1] == REPLACEMENT:
            safe_end -= 1  # an incomplete multi-byte character: wait for the next token
        hold = 0  # hold back a tail that may still grow into a stop string
        for stop in self._stop:
            for k in range(min(len(stop) - 1, safe_end + base - self._emitted), hold, -1):
                if decoded[safe_end - k : safe_end] == stop[:k]:
                    hold = k
                    break
        return self._emit(decoded, safe_end - hold)

    def _decode_window(self, ids: list[int]) -> str:
        """decode(ids) on its own, as the next window will decode it; one-token windows cached."""
        if len(ids) != 1:
            return self._decode(ids)
        text = self._single.get(ids[0])
        if text is None:
            text = self._single[ids[0]] = self._decode(ids)
        return text

    def flush(self) -> str:
        """At the end of generation: whatever is left (the held-back tail) becomes final."""
        if self.stopped:
            return ""
        pending = self._decode(self._ids[self._prefix :])[len(self._prefix_text) :]
        decoded = self._buf + pending
        return self._emit(decoded, len(decoded))

    def _emit(self, decoded: str, end: int) -> str:
        """Hand out decoded[..end) (indices relative to _base) beyond what is already emitted."""
        start = self._emitted - self._base
        if end <= start:
            return ""
        delta = decoded[start:end]
        self._emitted = self._base + end
        self._pieces.append(delta)
        # forget what no stop string can reach any more (only the stable part lives in _buf)
        cut = min(end - self._keep, len(self._buf))
        if cut > 0:
            self._buf = self._buf[cut:]
            self._base += cut
        return delta


class ReferenceTextStream:
    """The original O(n²) TextStream: re-decodes the whole output on every token.

    Kept as the oracle for tests (TextStream must stream exactly the same pieces) and as the
    "before" baseline of bench/serving_overhead.py. Not used by the server.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = [s for s in stop if s]
        self._ids: list[int] = []
        self._emitted = 0
        self.stopped = False
        self.text = ""

    def add(self, token_id: int) -> str:
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
            safe_end -= 1
        hold = 0
        for stop in self._stop:
            for k in range(min(len(stop) - 1, safe_end - self._emitted), hold, -1):
                if decoded[safe_end - k : safe_end] == stop[:k]:
                    hold = k
                    break
        safe_end -= hold
        return self._emit(decoded[:safe_end])

    def flush(self) -> str:
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
