"""LightningDataModule: records -> split -> encoded examples -> dynamically padded batches."""

from __future__ import annotations

import hashlib
import logging
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from hamdam.data.chat_format import IGNORE_INDEX, ChatFormat, Example
from hamdam.data.records import Dialogue, load_dialogues
from hamdam.errors import DataError

log = logging.getLogger(__name__)


def split_key(dialogue: Dialogue, salt: str = "") -> float:
    """A stable number in [0, 1) from the first user message.

    Splitting on the message rather than on the record index puts every duplicate of a message
    on the same side, so the validation split never holds a prompt the model trained on.
    """
    digest = hashlib.sha256((salt + dialogue.first_user_text).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class EncodedDataset(Dataset):
    """Encoded examples packed into two flat int32 arrays: a 500,000-dialogue corpus takes ~4 bytes
    per token instead of ~36 as Python lists of ints."""

    def __init__(self, examples: Iterable[Example]):
        self._ids = array("i")
        self._labels = array("i")
        self._offsets = array("q", [0])
        for e in examples:
            self._ids.extend(e.input_ids)
            self._labels.extend(e.labels)
            self._offsets.append(len(self._ids))

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> Example:
        start, end = self._offsets[index], self._offsets[index + 1]
        return Example(input_ids=self._ids[start:end].tolist(), labels=self._labels[start:end].tolist())

    @property
    def lengths(self) -> list[int]:
        offsets = self._offsets
        return [offsets[i + 1] - offsets[i] for i in range(len(offsets) - 1)]


class DialogueCollator:
    """Pads each batch to its own longest example (optionally to a multiple of N), not to a fixed size."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None):
        self.pad_id = pad_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        width = max(len(e.input_ids) for e in examples)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = (width + m - 1) // m * m
        input_ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, e in enumerate(examples):
            n = len(e.input_ids)
            input_ids[row, :n] = torch.tensor(e.input_ids)
            labels[row, :n] = torch.tensor(e.labels)
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices grouped into rows of at most ``capacity`` tokens, first-fit decreasing.

    Written here because the packers in the field either cut examples across rows or let them
    attend to each other; a row here holds whole examples only, and the collator keeps each
    example's attention and positions its own. An example longer than ``capacity`` gets a row alone.
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        size = lengths[index]
        for row, left in enumerate(room):
            if size <= left:
                rows[row].append(index)
                room[row] -= size
                break
        else:
            rows.append([index])
            room.append(capacity - size)
    return rows


class PackedDataset(Dataset):
    """Rows of whole examples (``pack``): one item is the list of examples of one row."""

    def __init__(self, examples: EncodedDataset, capacity: int):
        self.examples = examples
        self.rows = pack(examples.lengths, capacity)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> list[Example]:
        return [self.examples[i] for i in self.rows[index]]


class PackedCollator:
    """Rows of several examples each, for training without padding between them.

    Each example keeps its own positions (0, 1, ... from its first token), and no ``attention_mask``
    is passed: from positions that restart, transformers builds a causal mask that is also
    block-diagonal, so no token attends to another example. Labels stay as ``ChatFormat`` made them
    (replies only); each example starts with its user marker, masked, so no loss crosses examples.
    Only the tail of a row is padding (its own block, labels masked).
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: Sequence[Sequence[Example]]) -> dict[str, torch.Tensor]:
        width = max(sum(len(e.input_ids) for e in row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        tokens = 0
        for r, row in enumerate(rows):
            at = 0
            for e in row:
                n = len(e.input_ids)
                input_ids[r, at : at + n] = torch.tensor(e.input_ids)
                labels[r, at : at + n] = torch.tensor(e.labels)
                labels[r, at] = IGNORE_INDEX
                positions[r, at : at + n] = torch.arange(n)
                at += n
                tokens += n
            positions[r, at:] = torch.arange(width - at)
        return {"input_ids": input_ids, "labels": labels, "position_ids": positions, "tokens": torch.tensor(tokens)}


class LengthGroupedSampler(Sampler[int]):
    """Shuffled order in which each run of ``batch_size`` indices has similar lengths: transformers'
    mega-batch grouping (``get_length_grouped_indices``), drawn from a generator seeded by the epoch.

    Why not transformers' ``LengthGroupedSampler`` itself: it draws every epoch from one generator
    whose state no checkpoint keeps, so a run resumed at epoch N (``ckpt_path=last``) would see other
    batches than an uninterrupted one; seeded by ``seed + epoch`` (Lightning calls ``set_epoch``), it
    sees the same. Yields indices (not batches) so that Lightning can shard it across DDP processes.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batch_mult: int = 50):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_mult = mega_batch_mult
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from get_length_grouped_indices(self.lengths, self.batch_size, self.mega_batch_mult, generator)


class DialogueDataModule(L.LightningDataModule):
    """Loads and validates the data file at construction, so bad data fails before any training."""

    def __init__(
        self,
        path: str,
        val_path: str | None = None,
        val_fraction: float = 0.1,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        length_grouping: bool = True,
        pad_to_multiple_of: int | None = None,
        packing: bool = False,
        pack_length: int | None = None,
        seed: int = 42,
        relation_only: float = 0.0,
    ):
        super().__init__()
        self.path = Path(path)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.length_grouping = length_grouping
        self.pad_to_multiple_of = pad_to_multiple_of
        self.packing = packing
        self.pack_length = pack_length
        self.seed = seed
        self.relation_only = relation_only
        dialogues = load_dialogues(self.path)
        if val_path:  # already split (by `hamdam data prepare`)
            self.train_dialogues, self.val_dialogues = dialogues, load_dialogues(val_path)
        else:
            self.train_dialogues = [d for d in dialogues if split_key(d) >= val_fraction]
            self.val_dialogues = [d for d in dialogues if split_key(d) < val_fraction]
        if not self.train_dialogues or (val_fraction > 0 and not self.val_dialogues):
            raise DataError(
                f"Data file '{self.path}' has {len(dialogues)} record(s), too few to split with "
                f"data.val_fraction={val_fraction}: one side of the train/validation split is "
                "empty. Add records, or change data.val_fraction (0 disables validation)."
            )
        log.info(
            "Data %s: %d records -> %d train, %d validation",
            self.path,
            len(dialogues),
            len(self.train_dialogues),
            len(self.val_dialogues),
        )
        self.chat_format: ChatFormat | None = None
        self.train_set: EncodedDataset | None = None
        self.val_set: EncodedDataset | None = None

    def train_texts(self) -> Iterator[str]:
        """Texts of the training split, for training a tokenizer."""
        for dialogue in self.train_dialogues:
            yield from dialogue.texts()

    def attach(self, chat_format: ChatFormat) -> None:
        """Encodes both splits with the model's tokenizer and markers."""
        self.chat_format = chat_format
        train = self.train_dialogues
        if self.relation_only > 0:
            # A chat without a persona card knows the relation only (read from the user's words):
            # a share of the training headers says just that, so the model learns that header too.
            train = [replace(d, listener=None) if d.listener and split_key(d, "relation-only") < self.relation_only
                     else d for d in train]  # fmt: skip
        self.train_set = EncodedDataset(chat_format.encode_dialogues(train))
        self.val_set = EncodedDataset(chat_format.encode_dialogues(self.val_dialogues))

    def _loader(self, dataset: EncodedDataset | None, batch_size: int, train: bool) -> DataLoader:
        if dataset is None or self.chat_format is None:
            raise RuntimeError("DialogueDataModule.attach(chat_format) must run before the loaders")
        collate = DialogueCollator(self.chat_format.pad_id, self.pad_to_multiple_of)
        sampler = None
        if train and self.length_grouping:
            sampler = LengthGroupedSampler(dataset.lengths, batch_size, seed=self.seed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if not self.packing:
            return self._loader(self.train_set, self.batch_size, train=True)
        if self.train_set is None or self.chat_format is None:
            raise RuntimeError("DialogueDataModule.attach(chat_format) must run before the loaders")
        packed = PackedDataset(self.train_set, self.pack_length or self.chat_format.max_length)
        log.info("Packing: %d examples in %d rows of up to %d tokens", len(self.train_set), len(packed),
                 self.pack_length or self.chat_format.max_length)  # fmt: skip
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            packed,
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=PackedCollator(self.chat_format.pad_id),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_dialogues:
            return []
        return self._loader(self.val_set, self.eval_batch_size, train=False)
