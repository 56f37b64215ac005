"""The xiaohuangji ``.conv`` format, read as a stream.

    E                 a line "E" starts a dialogue
    M 你好             a line "M <text>" is one utterance
    M 你好呀

Utterances alternate user/assistant from the first; an odd trailing utterance has no reply and is
dropped (counted). Files come with LF or CRLF, a UTF-8 BOM, stray invalid bytes (replaced by U+FFFD
and counted) and in the "fenci" variant, where every word or character is followed by ``/``
(``M 你/好/吗/``): it is detected from the first utterances and joined back. An empty utterance
breaks the alternation, so its dialogue is kept only up to the last complete exchange before it.
Lines that are neither ``E`` nor ``M`` are skipped and counted.

Nothing is held beyond the dialogue being read: a 500,000-dialogue file streams through in
constant memory. Hand-written because no maintained library reads this format.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from hamdam.data.normalize import normalize_text
from hamdam.data.records import Dialogue, Turn
from hamdam.errors import DataError
from hamdam.io import utf16_hint

log = logging.getLogger(__name__)

_ASCII_WORD_EDGE = re.compile(r"[A-Za-z0-9]")


@dataclass
class ConvStats:
    """What a read kept and what it dropped; printed by ``hamdam data import`` and logged."""

    dialogues: int = 0  # dialogues kept (at least one complete exchange)
    exchanges: int = 0  # user -> assistant pairs kept
    utterances: int = 0  # "M" lines read
    dropped_trailing: int = 0  # odd last utterances with no reply
    empty_utterances: int = 0
    dropped_after_empty: int = 0  # utterances cut off by an empty one before them
    skipped_dialogues: int = 0  # "E" blocks with no complete exchange
    bad_bytes: int = 0  # invalid UTF-8 sequences replaced by U+FFFD
    malformed_lines: int = 0  # neither "E" nor "M ..."
    fenci: bool = False

    def summary(self) -> str:
        return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in asdict(self).items())


def _decode(raw: bytes, stats: ConvStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        stats.bad_bytes += text.count("\ufffd")
        return text


def _lines(path: Path, stats: ConvStats) -> Iterator[tuple[int, str]]:
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            raw = raw.rstrip(b"\r\n")
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            yield lineno, _decode(raw, stats)


def _looks_fenci(text: str) -> bool:
    pieces = [p for p in text.split("/") if p]
    return len(pieces) >= 2 and text.count("/") >= len(pieces) - 1 and all(len(p) <= 4 for p in pieces)


def detect_fenci(path: Path, sample: int = 2000) -> bool:
    """True when most of the first ``sample`` multi-character utterances are slash-separated."""
    seen = fenci = 0
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.startswith(b"M "):
                continue
            text = raw[2:].rstrip(b"\r\n").decode("utf-8", errors="replace").strip()
            if len(text) < 3:
                continue
            seen += 1
            fenci += _looks_fenci(text)
            if seen >= sample:
                break
    return seen > 0 and fenci / seen >= 0.6


def join_fenci(text: str) -> str:
    """``你/好/吗/`` -> ``你好吗``; Latin words keep one space between them (``hello/world`` -> ``hello world``)."""
    out = ""
    for piece in text.split("/"):
        piece = piece.strip()
        if not piece:
            continue
        if out and _ASCII_WORD_EDGE.match(out[-1]) and _ASCII_WORD_EDGE.match(piece[0]):
            out += " "
        out += piece
    return out


class ConvReader:
    """Streams the dialogues of a ``.conv`` file; ``stats`` holds the counts once read."""

    def __init__(self, fenci: bool | None = None, max_malformed_warnings: int = 5):
        self.fenci = fenci  # None: detect from the file
        self.max_malformed_warnings = max_malformed_warnings
        self.stats = ConvStats()

    def read(self, path: str | Path) -> Iterator[Dialogue]:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"Conversation file '{path}' does not exist. Check the path and run again.")
        with path.open("rb") as handle:
            hint = utf16_hint(handle.read(4096))
        if hint:
            raise DataError(f"Conversation file '{path}' is not UTF-8 text. {hint}")
        self.stats = stats = ConvStats()
        stats.fenci = detect_fenci(path) if self.fenci is None else self.fenci
        if stats.fenci:
            log.info("%s: fenci variant detected (characters separated by '/'); joining them", path)
        block: list[str] = []
        for lineno, line in _lines(path, stats):
            if line.strip() == "E":
                dialogue = self._dialogue(block)
                if dialogue is not None:
                    yield dialogue
                block = []
            elif line.startswith("M ") or line == "M":
                stats.utterances += 1
                block.append(line[2:])
            elif line.strip():
                stats.malformed_lines += 1
                if stats.malformed_lines <= self.max_malformed_warnings:
                    log.warning("%s, line %d: neither 'E' nor 'M <text>'; skipped: %.40r", path, lineno, line)
        dialogue = self._dialogue(block)
        if dialogue is not None:
            yield dialogue
        if stats.utterances == 0:
            raise DataError(
                f"Conversation file '{path}' holds no 'M <text>' lines: it is not in the .conv format "
                "(a line 'E' before each dialogue, a line 'M <text>' per utterance). Check the file and "
                "the --format you gave."
            )
        log.info("%s: %s", path, stats.summary())

    def _dialogue(self, block: list[str]) -> Dialogue | None:
        if not block:
            return None
        stats = self.stats
        texts: list[str] = []
        for i, raw in enumerate(block):
            text = normalize_text(join_fenci(raw) if stats.fenci else raw)
            if not text:
                stats.empty_utterances += 1
                stats.dropped_after_empty += len(block) - i - 1
                break
            texts.append(text)
        if len(texts) % 2:
            texts.pop()
            stats.dropped_trailing += 1
        if not texts:
            stats.skipped_dialogues += 1
            return None
        stats.dialogues += 1
        stats.exchanges += len(texts) // 2
        return Dialogue(tuple(Turn("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(texts)))
