"""Telegram Desktop's JSON export (``result.json``): one chat, or a full export's ``chats.list``.

A message's ``text`` is a string or a list of strings and entities (``{"type": "bold", "text":
...}``); they are joined. Service messages (joins, calls, pins) are dropped, media without a
caption too, and forwarded messages (they are someone else's words).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from hamdam.data.importers.chat_export import ChatExportReader, Message, clean_name
from hamdam.errors import DataError

_MEDIA_KEYS = ("photo", "file", "media_type", "sticker_emoji", "poll", "location_information", "contact_information")


def entity_text(text: Any) -> str:
    if isinstance(text, str):
        return text
    if isinstance(text, list):
        return "".join(part if isinstance(part, str) else str(part.get("text", "")) for part in text)
    return ""


class TelegramReader(ChatExportReader):
    """Reads a Telegram Desktop export; ``speaker`` is a sender's name (``from``) or id (``from_id``)."""

    def __init__(
        self,
        speaker: str | None = None,
        drop_forwarded: bool = True,
        session_gap_hours: float = 6.0,
        max_exchanges: int = 8,
    ):
        super().__init__(speaker, session_gap_hours, max_exchanges)
        self.drop_forwarded = drop_forwarded
        self._ids: dict[str, str] = {}  # from_id -> display name

    def conversations(self, path: Path) -> list[list[Message]]:
        self._ids = {}
        return [self._messages(chat, path) for chat in _chats(_load(path), path)]

    def sender_alias(self, speaker: str) -> str:
        return self._ids.get(str(speaker), speaker)

    def _messages(self, chat: dict, path: Path) -> list[Message]:
        messages = chat.get("messages")
        if not isinstance(messages, list):
            raise DataError(
                f"{path}: chat '{chat.get('name')}' has no \"messages\" list. Export it again with "
                "Telegram Desktop (Export chat history, format: machine-readable JSON)."
            )
        out: list[Message] = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                raise DataError(f"{path}: message {i + 1} of chat '{chat.get('name')}' is not a JSON object.")
            if msg.get("type") != "message":
                self.stats.system += 1
                continue
            if self.drop_forwarded and msg.get("forwarded_from"):
                self.stats.forwarded += 1
                continue
            text = entity_text(msg.get("text"))
            if not text.strip():
                if any(k in msg for k in _MEDIA_KEYS):
                    self.stats.media += 1
                continue
            sender = clean_name(str(msg.get("from") or msg.get("from_id") or ""))
            if not sender:
                self.stats.system += 1
                continue
            if msg.get("from_id"):
                self._ids[str(msg["from_id"])] = sender
            out.append(Message(sender, text, _time(msg.get("date"))))
        return out


def _load(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"Telegram export '{path}' does not exist. Check the path and run again.")
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise DataError(f"Telegram export '{path}' is not valid UTF-8 (byte {err.start}).") from None
    except json.JSONDecodeError as err:
        raise DataError(
            f"Telegram export '{path}' is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}. "
            "It may be cut short; export the chat again (Telegram Desktop: Export chat history, "
            "machine-readable JSON) and import result.json."
        ) from None


def _chats(value: Any, path: Path) -> list[dict]:
    if isinstance(value, dict) and isinstance(value.get("messages"), list):
        return [value]
    chats = value.get("chats", {}).get("list") if isinstance(value, dict) else None
    if isinstance(chats, list) and all(isinstance(c, dict) for c in chats):
        return chats
    raise DataError(
        f"'{path}' is not a Telegram Desktop export: expected an object with \"messages\" (one chat) or "
        '"chats": {"list": [...]} (a full export). Pick the right --format, or export again as JSON.'
    )


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None
