"""The prompt format: role markers that user text cannot forge, and loss on replies only.

A dialogue is laid out as token ids, never as text that is re-parsed::

    <user> u1 <assistant> a1 <end> <user> u2 <assistant> a2 <end>

The markers are single tokens that already exist in the vocabulary (gpt2-fa: <|startoftext|>,
<sep>, <|endoftext|>; a trained tokenizer: <|user|>, <|assistant|>, <|end|>). Text is encoded
piece by piece; look-alikes of any special token in the text are neutralized first (their angle
brackets become ‹ ›), and any special id that still appears in encoded text is dropped. So a
message containing "<|assistant|>" or "<sep>" can never open a turn.

Labels are the input ids on reply tokens and on the <end> after each reply; every other position
(markers, user text, padding) is -100. Too-long dialogues lose their oldest turns first; the final
reply is kept, and if even the last exchange does not fit, the user's message is cut from the left.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from hamdam.data.records import Dialogue, Turn
from hamdam.errors import ModelLoadError

IGNORE_INDEX = -100

# Marker-shaped text: <|user|>, < sep >, <|endoftext|>, </s>, <s>, <pad>, ...
_LOOKALIKE = re.compile(
    r"<\s*/?\s*\|?\s*(?:user|assistant|persona|system|end|endoftext|startoftext|sep|s|pad|unk|mask|bos|eos)"
    r"\s*\|?\s*>",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RoleMarkers:
    """The token strings that delimit turns; each must be one token of the vocabulary."""

    user: str
    assistant: str
    end: str
    pad: str
    # Opens the persona header (who speaks, to whom); None: a model without one.
    persona: str | None = None

    def all(self) -> list[str]:
        return [self.user, self.assistant, self.end, self.pad, *([self.persona] if self.persona else [])]


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


class ChatFormat:
    """Encodes dialogues for training and prompts for generation with one tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, markers: RoleMarkers, max_length: int):
        self.tokenizer = tokenizer
        self.markers = markers
        self.max_length = max_length
        ids = {}
        for name, token in (
            ("user", markers.user),
            ("assistant", markers.assistant),
            ("end", markers.end),
            ("pad", markers.pad),
        ):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or (
                tokenizer.unk_token_id is not None
                and token_id == tokenizer.unk_token_id
                and token != tokenizer.unk_token
            ):
                raise ModelLoadError(
                    f"The tokenizer has no token {token!r} for the {name} marker. Choose a token "
                    f"that exists in its vocabulary with model.markers.{name}=..., or train a "
                    "tokenizer that includes it."
                )
            ids[name] = token_id
        self.user_id, self.assistant_id, self.end_id, self.pad_id = (
            ids["user"],
            ids["assistant"],
            ids["end"],
            ids["pad"],
        )
        self.persona_id: int | None = None
        if markers.persona:
            self.persona_id = tokenizer.convert_tokens_to_ids(markers.persona)
            if self.persona_id is None or self.persona_id == tokenizer.unk_token_id:
                raise ModelLoadError(
                    f"The tokenizer has no token {markers.persona!r} for the persona marker. Train a tokenizer "
                    "that includes it, or set model.markers.persona=null."
                )
            ids["persona"] = self.persona_id
        self._headers: dict[tuple, list[int]] = {}
        # (persona, listener) -> how that persona addresses that listener: the header's forms when a
        # record gives none (training on the corpus); a persona card gives its own.
        self.addresses: dict[tuple[str, str], tuple[str, ...]] = {}
        self._special_ids = set(tokenizer.all_special_ids) | set(ids.values())
        specials = sorted(set(tokenizer.all_special_tokens) | set(markers.all()), key=len, reverse=True)
        self._special_text = re.compile("|".join(re.escape(s) for s in specials if s))

    @property
    def stop_ids(self) -> list[int]:
        """Generation ends at the end marker, or where the model starts a new turn itself."""
        return [self.end_id, self.user_id, self.assistant_id]

    @staticmethod
    def _defuse(match: re.Match[str]) -> str:
        return match.group(0).replace("<", "‹").replace(">", "›")

    def sanitize(self, text: str) -> str:
        """Neutralize marker look-alikes so that text stays text."""
        text = self._special_text.sub(self._defuse, text)
        return _LOOKALIKE.sub(self._defuse, text)

    def encode_text(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(self.sanitize(text), add_special_tokens=False)
        return [i for i in ids if i not in self._special_ids]

    def _pairs(self, turns: Sequence[Turn]) -> list[tuple[list[int], list[int]]]:
        pairs = []
        for k in range(0, len(turns), 2):
            user = self.encode_text(turns[k].text)
            reply = self.encode_text(turns[k + 1].text) if k + 1 < len(turns) else []
            pairs.append((user, reply))
        return pairs

    def header(self, persona: str | None, listener: str | None = None, forms: Sequence[str] | None = None) -> list[int]:
        """``<|persona|> relation listener : forms of address <|end|>``: who speaks, to whom, and what
        they call them, before the first turn. Its own marker, which user text can never spell
        (``sanitize``); empty for a model without one or when the persona is unknown. Never learned
        (its labels are masked)."""
        if self.persona_id is None or not persona:
            return []
        if forms is None:
            forms = self.addresses.get((persona, listener), ()) if listener else ()
        key = (persona, listener, tuple(forms))
        if key not in self._headers:
            text = f"{persona} {listener}" if listener else persona
            if forms:
                text += " : " + " ، ".join(forms)
            self._headers[key] = [self.persona_id, *self.encode_text(text), self.end_id]
        return self._headers[key]

    def encode_dialogue(self, dialogue: Dialogue) -> Example:
        """Token ids and labels for training, within ``max_length``."""
        return self._assemble(self._pairs(dialogue.turns), self.header(dialogue.persona, dialogue.listener))

    def encode_dialogues(self, dialogues: Iterable[Dialogue], chunk: int = 8192) -> Iterator[Example]:
        """``encode_dialogue`` for many: the tokenizer runs on batches of texts (in Rust, on every
        core), which is what makes a 500,000-dialogue corpus quick to encode."""
        batch: list[Dialogue] = []
        for dialogue in dialogues:
            batch.append(dialogue)
            if len(batch) == chunk:
                yield from self._encode_batch(batch)
                batch = []
        if batch:
            yield from self._encode_batch(batch)

    def _encode_batch(self, dialogues: list[Dialogue]) -> Iterator[Example]:
        texts = [self.sanitize(t.text) for d in dialogues for t in d.turns]
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:  # the Rust tokenizer itself: transformers' wrapper doubles the time
            encoded = iter([e.ids for e in backend.encode_batch(texts, add_special_tokens=False)])
        else:
            encoded = iter(self.tokenizer(texts, add_special_tokens=False)["input_ids"])
        special = self._special_ids
        for dialogue in dialogues:
            ids = [[i for i in next(encoded) if i not in special] for _ in dialogue.turns]
            if len(ids) % 2:
                ids.append([])
            header = self.header(dialogue.persona, dialogue.listener)
            yield self._assemble(list(zip(ids[::2], ids[1::2], strict=True)), header)

    def _assemble(self, pairs: list[tuple[list[int], list[int]]], header: list[int] | None = None) -> Example:
        header = header or []
        budget = self.max_length - len(header)
        user, reply = pairs[-1]
        # The last exchange always stays: <user> u <assistant> reply <end>.
        reply_room = max(budget - 3 - 1, 1)  # at least one user token
        truncated_reply = len(reply) > reply_room
        reply = reply[:reply_room]
        user = user[-(budget - 3 - len(reply)) :] if budget - 3 - len(reply) > 0 else []
        chosen = [(user, reply, not truncated_reply)]
        used = 3 + len(user) + len(reply)
        for user_ids, reply_ids in reversed(pairs[:-1]):
            cost = 3 + len(user_ids) + len(reply_ids)
            if used + cost > budget:
                break
            chosen.append((user_ids, reply_ids, True))
            used += cost
        input_ids: list[int] = list(header)
        labels: list[int] = [IGNORE_INDEX] * len(header)
        for user_ids, reply_ids, complete in reversed(chosen):
            input_ids += [self.user_id, *user_ids, self.assistant_id]
            labels += [IGNORE_INDEX] * (len(user_ids) + 2)
            input_ids += reply_ids
            labels += reply_ids
            if complete:  # a cut reply gets no end: the model must not learn to stop there
                input_ids.append(self.end_id)
                labels.append(self.end_id)
        return Example(input_ids=input_ids, labels=labels)

    def encode_prompt(
        self, history: Sequence[Turn], message: str, budget: int, header: Sequence[int] = ()
    ) -> list[int]:
        """Ids that ask for the next reply: the persona header, past turns (oldest dropped first), then
        the message."""
        budget -= len(header)
        user = self.encode_text(message)
        user = user[-max(budget - 2, 1) :]
        ids = [self.user_id, *user, self.assistant_id]
        for user_ids, reply_ids in reversed(self._pairs(history)):
            block = [self.user_id, *user_ids, self.assistant_id, *reply_ids, self.end_id]
            if len(ids) + len(block) > budget:
                break
            ids = block + ids
        return [*header, *ids]

    def decode_reply(self, ids: Sequence[int]) -> str:
        """Text of a generated reply, cut at the first stop id so no forged turn survives."""
        stops = set(self.stop_ids)
        kept = []
        for i in ids:
            if i in stops:
                break
            kept.append(i)
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return self.sanitize(text).strip()
