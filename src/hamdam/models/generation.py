"""The one generation set-up: the chat, ``hamdam evaluate`` and (next) self-generation share it.

The model's stop markers end a reply, the reply budget leaves room for context in the model's
window, and prompts of a batch are left-padded so every row continues from its own last token.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
from transformers import GenerationConfig

from hamdam.data.chat_format import ChatFormat

log = logging.getLogger(__name__)


class Generator:
    def __init__(self, model: torch.nn.Module, chat_format: ChatFormat, generation: GenerationConfig):
        self.model = model
        self.chat_format = chat_format
        window = chat_format.max_length
        self.config = copy.deepcopy(generation)
        max_new = generation.max_new_tokens or 64
        if max_new > window // 2:
            log.info(
                "generation.max_new_tokens=%d leaves no room for context in the model's %d-token window; using %d",
                max_new,
                window,
                window // 2,
            )
            max_new = window // 2
        self.config.max_new_tokens = max_new
        self.config.eos_token_id = chat_format.stop_ids
        self.config.pad_token_id = chat_format.pad_id
        self.prompt_budget = window - max_new
        self.stops = set(chat_format.stop_ids)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        """The new token ids after each prompt (prompts already within ``prompt_budget``)."""
        pad = self.chat_format.pad_id
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        output = self.model.generate(
            input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device), generation_config=self.config
        )
        return output[:, width:].tolist()

    def ended(self, ids: Sequence[int]) -> bool:
        """Whether a generation stopped by itself (a stop marker) rather than at the budget."""
        return any(i in self.stops for i in ids)
