"""WhatsApp "Export chat" text files (without media), from Android and iOS, in English or Persian.

    12/31/20, 9:41 PM - Maman: Salam azizam          Android, US locale
    31/12/2020, 21:41 - Maman: Salam azizam          Android, 24-hour locales
    [31/12/2020, 21:41:05] Maman: Salam azizam       iOS (U+200E marks before placeholders)
    ۱۴۰۲/۱۰/۱۲، ۹:۴۱ ب.ظ - مامان: سلام عزیزم          Android, Persian locale (Jalali dates)

A line that does not start with a date continues the message before it. A header without
"Name: " is a system line (encryption notice, "X added Y"). Day/month order is read from the
file itself (a part above 12 settles it; otherwise a 12-hour clock means month first).
Hand-written: no maintained library parses these exports in both calendars.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import jdatetime

from hamdam.data.importers.chat_export import ChatExportReader, Message, clean_name
from hamdam.errors import DataError

_DIGITS = str.maketrans(
    {
        **{chr(0x06F0 + d): str(d) for d in range(10)},
        **{chr(0x0660 + d): str(d) for d in range(10)},
        "،": ",",
        "\u202f": " ",  # narrow no-break space before AM/PM in newer exports
        "\u00a0": " ",
    }
)
_LEAD = "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\ufeff"
_DATE = r"(?P<date>\d{1,4}[/.\-]\d{1,2}[/.\-]\d{1,4})"
_TIME = r"(?P<time>\d{1,2}[:.]\d{2}(?:[:.]\d{2})?)(?:\s?(?P<ampm>[AaPp]\.?\s?[Mm]\.?|ق\.?\s?ظ|ب\.?\s?ظ))?"
_ANDROID = re.compile(rf"^{_DATE},?\s{_TIME}\s[-–]\s(?P<rest>.*)$")
_IOS = re.compile(rf"^\[{_DATE},?\s{_TIME}\]\s(?P<rest>.*)$")
_SENDER = re.compile(r"^(?P<name>[^:]{1,80}?):\s(?P<text>.*)$", re.DOTALL)
_PM = ("p", "ب")


def jalali_to_gregorian(jy: int, jm: int, jd: int) -> date:
    """The Gregorian date of a Jalali (Solar Hijri) one, as Persian phones write export dates."""
    return jdatetime.date(jy, jm, jd).togregorian()


@dataclass
class _Header:
    parts: tuple[int, int, int]
    clock: tuple[int, int, int]
    ampm: str | None
    rest: str


class WhatsAppReader(ChatExportReader):
    """Reads one exported chat; ``speaker`` is whose words become the replies."""

    def __init__(
        self,
        speaker: str | None = None,
        media_placeholders: list[str] | None = None,
        deleted_placeholders: list[str] | None = None,
        edited_suffixes: list[str] | None = None,
        session_gap_hours: float = 6.0,
        max_exchanges: int = 8,
    ):
        super().__init__(speaker, session_gap_hours, max_exchanges)
        self.media = {p.casefold() for p in media_placeholders or []}
        self.deleted = {p.casefold() for p in deleted_placeholders or []}
        self.edited = list(edited_suffixes or [])

    def conversations(self, path: Path) -> list[list[Message]]:
        return [self.messages(path)]

    def messages(self, path: Path) -> list[Message]:
        headers = self._parse(path)
        order = _date_order([h.parts for h, _ in headers], any(h.ampm for h, _ in headers))
        out: list[Message] = []
        for header, lines in headers:
            body = _SENDER.match("\n".join([header.rest, *lines]))
            if body is None:
                self.stats.system += 1
                continue
            text = self._text(body.group("text"))
            if text is None:
                continue
            out.append(Message(clean_name(body.group("name")), text, _when(header, order)))
        return out

    def _parse(self, path: Path) -> list[tuple[_Header, list[str]]]:
        if not path.is_file():
            raise DataError(f"WhatsApp export '{path}' does not exist. Check the path and run again.")
        raw = path.read_bytes()
        text = raw.decode("utf-8", errors="replace")
        headers: list[tuple[_Header, list[str]]] = []
        for line in text.splitlines():
            header = _header(line)
            if header is not None:
                headers.append((header, []))
            elif headers:
                headers[-1][1].append(line)
            elif line.strip():
                self.stats.malformed_lines += 1
        if not headers:
            raise DataError(
                f"'{path}' is not a WhatsApp text export: no line starts with a date and time such as "
                "'31/12/2020, 21:41 - Name: text' or '[31/12/2020, 21:41:05] Name: text'. Export the chat "
                "with WhatsApp's 'Export chat' -> 'Without media', or pick the right --format."
            )
        return headers

    def _text(self, text: str) -> str | None:
        """The message's words; None (counted) for media, deleted and empty messages."""
        text = text.strip().strip(_LEAD).strip()
        for suffix in self.edited:
            if text.endswith(suffix):
                text = text[: -len(suffix)].rstrip()
        key = text.strip(_LEAD).casefold()
        if key in self.deleted:
            self.stats.deleted += 1
            return None
        if key in self.media or key.startswith("<attached:") or key.endswith("(file attached)"):
            self.stats.media += 1
            return None
        return text or None


def _header(line: str) -> _Header | None:
    line = line.lstrip(_LEAD)
    # Matched with Latin digits and commas; the translation keeps every position, so the message
    # itself is taken from the original line, its Persian digits and commas untouched.
    latin = line.translate(_DIGITS)
    match = _ANDROID.match(latin) or _IOS.match(latin)
    if match is None:
        return None
    parts = tuple(int(p) for p in re.split(r"[/.\-]", match.group("date")))
    clock = [int(p) for p in re.split(r"[:.]", match.group("time"))]
    ampm = match.group("ampm")
    return _Header(parts, (clock[0], clock[1], clock[2] if len(clock) > 2 else 0), ampm, line[match.start("rest") :])


def _date_order(all_parts: list[tuple[int, int, int]], twelve_hour: bool) -> str:
    """ "ymd", "dmy" or "mdy" for the whole file."""
    if all(p[0] > 31 for p in all_parts):
        return "ymd"
    if any(p[0] > 12 for p in all_parts):
        return "dmy"
    if any(p[1] > 12 for p in all_parts):
        return "mdy"
    return "mdy" if twelve_hour else "dmy"


def _when(header: _Header, order: str) -> datetime | None:
    a, b, c = header.parts
    year, month, day = {"ymd": (a, b, c), "dmy": (c, b, a), "mdy": (c, a, b)}[order]
    if year < 100:
        year += 2000
    hour, minute, second = header.clock
    if header.ampm:
        pm = header.ampm[0].lower() in _PM
        hour = hour % 12 + (12 if pm else 0)
    try:
        day_of = jalali_to_gregorian(year, month, day) if year < 1700 else date(year, month, day)
        return datetime(day_of.year, day_of.month, day_of.day, hour, minute, second)
    except ValueError:
        return None  # an impossible date: the message is kept, only its session break is unknown
