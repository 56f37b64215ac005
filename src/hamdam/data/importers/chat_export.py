"""Chat exports (WhatsApp, Telegram) to dialogues in one speaker's voice.

The chosen speaker's messages become the assistant's replies to what the others wrote just before;
consecutive messages of one sender are merged; a long silence starts a new dialogue. Shared by the
WhatsApp and Telegram readers, which only parse their formats into ``Message`` lists.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from hamdam.data.normalize import normalize_text
from hamdam.data.records import Dialogue, Turn
from hamdam.errors import DataError

# Direction marks that exports put around names and placeholders (iOS puts U+200E before them).
_MARKS = dict.fromkeys(map(ord, "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))


def clean_name(name: str) -> str:
    return unicodedata.normalize("NFC", name.translate(_MARKS)).strip()


@dataclass(frozen=True)
class Message:
    sender: str
    text: str
    time: datetime | None


@dataclass
class ExportStats:
    """What an export held and what became training data; printed by ``hamdam data import``."""

    messages: int = 0  # messages with text, after the drops below
    media: int = 0  # media placeholders and media without a caption
    system: int = 0  # "X joined", "messages are end-to-end encrypted", service messages
    deleted: int = 0
    forwarded: int = 0
    malformed_lines: int = 0
    merged: int = 0  # messages merged into the one before (same sender)
    dialogues: int = 0
    exchanges: int = 0
    unanswered: int = 0  # others' messages the speaker never answered
    speaker_openers: int = 0  # the speaker's messages with nothing before them to answer
    senders: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        counts = {k: v for k, v in self.__dict__.items() if k != "senders"}
        people = ", ".join(f"{name} {n}" for name, n in sorted(self.senders.items(), key=lambda kv: -kv[1]))
        return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()) + f"; senders: {people}"


def resolve_speaker(speaker: str | None, senders: Counter, path: object) -> str:
    """The speaker as the export spells them; an error that lists the senders otherwise."""
    listing = ", ".join(f"'{name}' ({n} messages)" for name, n in senders.most_common(20))
    if not senders:
        raise DataError(
            f"{path}: the export holds no text messages from anyone, so there is nothing to import. "
            "Check that it is the full export of the chat (with its messages) and run again."
        )
    if not speaker:
        raise DataError(
            f"{path}: say whose words the model should learn with --speaker NAME. The senders in this "
            f"export are: {listing}."
        )
    wanted = clean_name(speaker)
    if wanted in senders:
        return wanted
    folded = {name.casefold(): name for name in senders}
    if wanted.casefold() in folded:
        return folded[wanted.casefold()]
    raise DataError(
        f"{path}: no messages from '{speaker}'. Pass --speaker with one of the senders as the export "
        f"spells them: {listing}."
    )


def speaker_dialogues(
    messages: list[Message],
    speaker: str,
    stats: ExportStats,
    session_gap: timedelta,
    max_exchanges: int,
) -> Iterator[Dialogue]:
    """Dialogues whose assistant turns are ``speaker``'s messages and user turns the others' before them."""
    blocks: list[tuple[str, list[str], datetime | None]] = []  # (sender, texts, time of the last one)
    for msg in messages:
        text = normalize_text(msg.text)
        if not text:
            continue
        last = blocks[-1] if blocks else None
        gap = last is not None and last[2] is not None and msg.time is not None and msg.time - last[2] > session_gap
        if last is not None and last[0] == msg.sender and not gap:
            last[1].append(text)
            blocks[-1] = (last[0], last[1], msg.time or last[2])
            stats.merged += 1
        else:
            if gap:
                blocks.append(("", [], None))  # a session break, before the message that opens the next one
            blocks.append((msg.sender, [text], msg.time))
    blocks.append(("", [], None))

    turns: list[Turn] = []
    pending: list[str] = []
    for sender, texts, _ in blocks:
        if not sender:  # end of a session
            if pending:
                stats.unanswered += 1
            yield from _chunks(turns, max_exchanges, stats)
            turns, pending = [], []
        elif sender == speaker:
            if pending:
                turns += [Turn("user", "\n".join(pending)), Turn("assistant", "\n".join(texts))]
                pending = []
            else:
                stats.speaker_openers += 1
        else:
            pending += texts


def _chunks(turns: list[Turn], max_exchanges: int, stats: ExportStats) -> Iterator[Dialogue]:
    step = 2 * max_exchanges
    for start in range(0, len(turns), step):
        chunk = tuple(turns[start : start + step])
        stats.dialogues += 1
        stats.exchanges += len(chunk) // 2
        yield Dialogue(chunk)


class ChatExportReader:
    """A reader of one export format: subclasses say how a file becomes conversations of messages."""

    def __init__(self, speaker: str | None = None, session_gap_hours: float = 6.0, max_exchanges: int = 8):
        self.speaker = speaker
        self.session_gap = timedelta(hours=session_gap_hours)
        self.max_exchanges = max_exchanges
        self.stats = ExportStats()

    def conversations(self, path: Path) -> list[list[Message]]:
        """Each chat in the file as its messages in order, media, system and deleted ones dropped."""
        raise NotImplementedError

    def sender_alias(self, speaker: str) -> str:
        """The sender name that ``speaker`` stands for (Telegram: a from_id)."""
        return speaker

    def read(self, path: str | Path) -> Iterator[Dialogue]:
        path = Path(path)
        self.stats = ExportStats()
        chats = self.conversations(path)
        senders = Counter(m.sender for chat in chats for m in chat)
        self.stats.senders = dict(senders)
        self.stats.messages = sum(senders.values())
        speaker = resolve_speaker(self.sender_alias(self.speaker) if self.speaker else None, senders, path)
        for chat in chats:
            yield from speaker_dialogues(chat, speaker, self.stats, self.session_gap, self.max_exchanges)
