"""Replies from a trained model: prompt within the context window, sampling, clean stops."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig

from hamdam.data.chat_format import ChatFormat
from hamdam.data.normalize import normalize_text
from hamdam.data.records import Turn

log = logging.getLogger(__name__)


@dataclass
class Conversation:
    """The turns so far; the engine trims what does not fit, the conversation keeps everything."""

    turns: list[Turn] = field(default_factory=list)

    def add(self, message: str, reply: str) -> None:
        self.turns += [Turn("user", message), Turn("assistant", reply)]


class ChatEngine:
    """Generates one reply at a time from a causal LM and its ChatFormat."""

    MAX_ATTEMPTS = 3

    def __init__(self, model: torch.nn.Module, chat_format: ChatFormat, generation: GenerationConfig):
        self.model = model
        self.chat_format = chat_format
        window = chat_format.max_length
        self.generation = copy.deepcopy(generation)
        max_new = generation.max_new_tokens or 64
        if max_new > window // 2:
            log.info(
                "generation.max_new_tokens=%d leaves no room for context in the model's %d-token window; using %d",
                max_new,
                window,
                window // 2,
            )
            max_new = window // 2
        self.generation.max_new_tokens = max_new
        self.generation.eos_token_id = chat_format.stop_ids
        self.generation.pad_token_id = chat_format.pad_id
        self.prompt_budget = window - max_new

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def reply(self, conversation: Conversation, message: str) -> str:
        """The model's answer to ``message``; never empty, never carrying a next turn."""
        message = normalize_text(message)
        ids = self.chat_format.encode_prompt(conversation.turns, message, self.prompt_budget)
        input_ids = torch.tensor([ids], device=self.device)
        for _ in range(self.MAX_ATTEMPTS):
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=self.generation,
            )
            text = self.chat_format.decode_reply(output[0, input_ids.shape[1] :].tolist())
            if text:
                return text
        return "…"
