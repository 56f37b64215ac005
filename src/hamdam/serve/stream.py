"""A reply streamed as the model writes it, without giving up the output guard.

The terminal chat checks a whole reply before showing it. A streamed reply is shown while it is
written, so text is released a word at a time, only after the output guard has passed everything
written so far, and the last ``hold_words`` words are held back: a harmful phrase is caught while
its words are still held, and generation stops there. The finished reply then goes through the
same ``ChatEngine.checked`` as the terminal's; if it is withheld, the client is told to replace what
it showed (never anything the guard had flagged).

transformers' ``TextIteratorStreamer`` decodes text for one row and knows nothing of our stop
markers, user ``stop`` strings or the guard; this is the small part of it we need, plus those.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from hamdam.data.chat_format import ChatFormat

_SPACE = re.compile(r"\s+")


class ReplyStream(BaseStreamer, StoppingCriteria):
    """Receives the generated ids (a streamer), stops generation (a stopping criterion) at a user
    ``stop`` string or an unsafe prefix, and calls ``emit`` with each newly released piece of text."""

    def __init__(
        self,
        chat_format: ChatFormat,
        emit: Callable[[str], None],
        unsafe: Callable[[str], str | None] | None = None,
        stop: Sequence[str] = (),
        hold_words: int = 4,
    ):
        self.chat_format = chat_format
        self.emit = emit
        self.unsafe = unsafe
        self.stop = [s for s in stop if s]
        self.hold_words = hold_words
        self.stops = set(chat_format.stop_ids)
        self.ids: list[int] = []
        self.text = ""  # the reply so far, cut at a stop marker or stop string
        self.released = ""  # what the client has been sent
        self.ended = False  # the model wrote a stop marker
        self.stopped = False  # a stop string or an unsafe prefix ended it
        self.flagged: str | None = None  # the guard's reason
        self._prompt_seen = False

    # --- BaseStreamer -------------------------------------------------------------------------

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        if self.ended or self.stopped:
            return
        for token in value.reshape(-1).tolist():
            if token in self.stops:
                self.ended = True
                break
            self.ids.append(token)
        self._update()

    def end(self) -> None:
        pass

    # --- StoppingCriteria ---------------------------------------------------------------------

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.stopped, dtype=torch.bool, device=input_ids.device)

    # --- release ------------------------------------------------------------------------------

    @property
    def completion_tokens(self) -> int:
        return len(self.ids) + (1 if self.ended else 0)

    def _update(self) -> None:
        text = self.chat_format.decode_reply(self.ids).rstrip("\ufffd")  # a character still being written
        for stop in self.stop:
            at = text.find(stop)
            if at >= 0:
                text, self.stopped = text[:at].rstrip(), True
        self.text = text
        boundary = self._boundary(text)
        if boundary <= len(self.released):
            return
        if self.unsafe is not None:
            reason = self.unsafe(text)
            if reason:
                self.flagged, self.stopped = reason, True
                return
        candidate = text[:boundary]
        if candidate.startswith(self.released):
            piece, self.released = candidate[len(self.released) :], candidate
            self.emit(piece)

    def _boundary(self, text: str) -> int:
        """How much of ``text`` may be shown now: all but the last ``hold_words`` words, at a space."""
        spaces = [m.start() for m in _SPACE.finditer(text)]
        if len(spaces) < self.hold_words or not self.hold_words and not spaces:
            return 0
        return spaces[-self.hold_words] if self.hold_words else spaces[-1]

    def rest(self, final: str) -> str | None:
        """What completes the released text into ``final``; None when ``final`` does not continue it
        (the client must replace what it showed)."""
        return final[len(self.released) :] if final.startswith(self.released) else None
