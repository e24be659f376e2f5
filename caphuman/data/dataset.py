"""Training data from a preprocessed dataset folder: an iterable dataset and a Lightning data module.

:class:`CapHumanDataset` streams records from the tar shards listed in ``index.jsonl``. Work is
split into ``world_size x num_workers`` slots (one per DataLoader worker of each rank) so that
every record is read by exactly one slot per pass:
- shard mode (at least as many shards as slots): each slot reads whole shards, so no two
  processes open the same file (best for page cache and network storage);
- record mode (fewer shards than slots, e.g. small datasets on many GPUs): every slot takes
  every n-th record of one shared permutation.

Everything random is a function of ``seed`` and the epoch: the shard and record order (per slot
layout) and the condition dropout of each record (per key, so it does not even depend on the
number of workers). A resumed run therefore sees the same batches; :meth:`skip_batches` jumps
over the ones it already trained on.

Condition dropout (for classifier-free guidance) lives here, as in IP-Adapter: a dropped text
condition is the empty caption; a dropped identity zeroes ``face_embeds`` and
``clip_pixel_values`` and sets ``drop_identity``; a dropped hint zeroes ``hint``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from caphuman.data.dropout import ConditionDropout
from caphuman.data.preprocess import read_dataset_settings
from caphuman.data.records import CLIP_SUFFIX, EMBEDDING_SUFFIX, HINT_SUFFIX, IMAGE_SUFFIX, MASK_SUFFIX, META_SUFFIX, decode_members
from caphuman.data.shards import IndexEntry, ShardReader, read_index
from caphuman.errors import CapHumanError, ConfigError

logger = logging.getLogger(__name__)

# Members a training sample needs (the head parameters are not decoded).
_SAMPLE_SUFFIXES = (IMAGE_SUFFIX, CLIP_SUFFIX, MASK_SUFFIX, EMBEDDING_SUFFIX, HINT_SUFFIX, META_SUFFIX)
# Open shard files kept per iterator (records of one slot may be spread over many shards).
_OPEN_SHARDS = 8


def _key_seed(key: str) -> int:
    """A 64-bit integer of the record key, for per-record random streams."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "little")


def dropout_decisions(dropout: ConditionDropout, seed: int, epoch: int, key: str) -> tuple[bool, bool, bool]:
    """(drop_text, drop_identity, drop_hint) of one record in one epoch: a pure function of its arguments."""
    draws = np.random.default_rng([seed, epoch, _key_seed(key)]).random(3)
    return bool(draws[0] < dropout.text), bool(draws[1] < dropout.identity), bool(draws[2] < dropout.hint)


def _distributed_from_environment() -> tuple[int, int]:
    """(rank, world_size): torch.distributed when initialised, else torchrun/SLURM-style variables."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    return rank, world_size


class CapHumanDataset(IterableDataset):
    """Streams training samples from a dataset made by ``caphuman preprocess``.

    Args:
        root: dataset folder (index.jsonl, shards/, preprocess.yaml).
        image_size: side s of the yielded image, mask and hint; at most the stored size S. A
            smaller size is resized on the fly (area for the image and hint, nearest for the mask).
        clip_image_processor: transformers CLIPImageProcessor for the reference crop; None
            yields the 224 px crop as is, scaled to [0, 1].
        dropout: condition dropout rates (None: the published defaults).
        seed: seeds order and dropout.
        shuffle: shuffle shard and record order each epoch (False: index order).
        repeat: loop forever, epoch after epoch (epoch e + 1 after e), for step-based training.
        keys: only these records (e.g. a train or validation split); None: all.

    Yields dicts:
        pixel_values: (3, s, s) float32 in [-1, 1], the target image.
        clip_pixel_values: (1, 3, c, c) float32: CLIP-normalised reference crop (R = 1 reference),
            c = the processor's crop size; zeros when the identity is dropped.
        face_embeds: (1, G) float32 global identity embedding; zeros when the identity is dropped.
        face_mask: (1, s, s) float32 in {0, 1}.
        hint: (9, s, s) float32 head condition; zeros when the hint is dropped.
        caption: str, "" when the text is dropped.
        drop_text, drop_identity, drop_hint: 0-d bool tensors.
        key: str record key.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int = 512,
        clip_image_processor=None,
        dropout: ConditionDropout | None = None,
        seed: int = 0,
        shuffle: bool = True,
        repeat: bool = False,
        keys: Sequence[str] | None = None,
    ):
        super().__init__()
        self.root = Path(root)
        entries = read_index(self.root)
        if keys is not None:
            wanted = set(keys)
            entries = [entry for entry in entries if entry.key in wanted]
        if not entries:
            raise CapHumanError(
                f"Dataset '{self.root}' has no records{' in this split' if keys is not None else ''}; run `caphuman preprocess` first."
            )
        self.entries: list[IndexEntry] = entries
        self.stored_size = self._stored_size()
        if image_size > self.stored_size:
            raise ConfigError(
                f"image_size {image_size} is larger than the {self.stored_size} px stored in '{self.root}'; "
                f"preprocess again with --image-size {image_size}."
            )
        self.image_size = int(image_size)
        self.clip_image_processor = clip_image_processor
        # A fresh default per object: a shared default instance would carry one's edits to the next.
        self.dropout = dropout if dropout is not None else ConditionDropout()
        self.seed = int(seed)
        self.shuffle = shuffle
        self.repeat = repeat
        self.epoch = 0
        self._rank: int | None = None
        self._world_size: int | None = None
        self._skip: tuple[int, int, int] | None = None  # (epoch, batches, batch_size)
        # Shards in index order, each with its records in index order.
        shards: dict[str, list[str]] = {}
        for entry in entries:
            shards.setdefault(entry.shard, []).append(entry.key)
        self._shards: list[tuple[str, list[str]]] = list(shards.items())

    # ------------------------------------------------------------------------- configuration

    @property
    def num_records(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and dropout the next iteration uses (call before each epoch)."""
        self.epoch = int(epoch)

    def set_distributed(self, rank: int, world_size: int) -> None:
        """Fix the rank and world size (default: from torch.distributed or RANK/WORLD_SIZE)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size}).")
        self._rank, self._world_size = int(rank), int(world_size)

    def skip_batches(self, num_batches: int, batch_size: int) -> None:
        """Resume: the next iteration of the current epoch starts after ``num_batches`` batches.

        Accounts for DataLoader workers, which deliver batches round-robin (batch b comes from
        worker b mod num_workers): each worker takes over the stream whose turn is next and skips
        what that stream had delivered, so batch j of the resumed run is batch K + j. Exact while
        every worker still has data, i.e. always with ``repeat=True``; near the end of a finite
        epoch the DataLoader's order depends on which worker ran out first. Applies to the epoch
        that is current when called; :meth:`set_epoch` with another epoch clears it.
        """
        if num_batches < 0 or batch_size < 1:
            raise ValueError(f"skip_batches needs num_batches >= 0 and batch_size >= 1, got {num_batches}, {batch_size}.")
        self._skip = (self.epoch, int(num_batches), int(batch_size))

    def distributed(self) -> tuple[int, int]:
        if self._rank is not None:
            return self._rank, self._world_size
        return _distributed_from_environment()

    # ------------------------------------------------------------------------- planning

    def plan(self, epoch: int, slot: int, num_slots: int) -> list[tuple[str, str]]:
        """The (shard, key) reading order of one slot in one epoch (see the module docstring)."""
        rng = np.random.default_rng([self.seed, epoch])
        shard_order = rng.permutation(len(self._shards)) if self.shuffle else np.arange(len(self._shards))
        if len(self._shards) >= num_slots:
            mine: list[tuple[str, str]] = []
            for shard_index in shard_order[slot::num_slots]:
                shard, keys = self._shards[int(shard_index)]
                mine.extend((shard, key) for key in keys)
            if self.shuffle:
                # Mix records across this slot's shards, not only within one shard.
                mine = [mine[i] for i in np.random.default_rng([self.seed, epoch, slot, num_slots]).permutation(len(mine))]
            return mine
        everything = [(shard, key) for shard, keys in self._shards for key in keys]
        if self.shuffle:
            everything = [everything[i] for i in rng.permutation(len(everything))]
        return everything[slot::num_slots]

    def _resume_position(self, worker: int, num_workers: int) -> tuple[int, int]:
        """(logical worker, samples to skip) for this DataLoader worker when resuming.

        The DataLoader takes batch j of an iterator from worker j mod W. Originally, global
        batch b came from worker b mod W. So after K batches, the resumed worker w must continue
        the stream of original worker (w + K) mod W, minus the batches that one had delivered.
        """
        if self._skip is None or self._skip[0] != self.epoch:
            return worker, 0
        _, batches, batch_size = self._skip
        logical = (worker + batches) % num_workers
        # Batches b = logical, logical + W, ... below K came from the logical worker.
        delivered = (batches - logical + num_workers - 1) // num_workers if batches > logical else 0
        return logical, delivered * batch_size

    # ------------------------------------------------------------------------- iteration

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world_size = self.distributed()
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        worker, to_skip = self._resume_position(worker, num_workers)
        slot, num_slots = rank * num_workers + worker, world_size * num_workers
        readers: OrderedDict[str, ShardReader] = OrderedDict()
        try:
            epoch = self.epoch
            while True:
                for shard, key in self.plan(epoch, slot, num_slots):
                    if to_skip:
                        to_skip -= 1
                        continue
                    yield self._sample(self._reader(readers, shard).read_files(key, _SAMPLE_SUFFIXES), key, epoch)
                if not self.repeat:
                    return
                epoch += 1
        finally:
            for reader in readers.values():
                reader.close()

    def _reader(self, readers: OrderedDict[str, ShardReader], shard: str) -> ShardReader:
        reader = readers.get(shard)
        if reader is None:
            if len(readers) >= _OPEN_SHARDS:
                readers.popitem(last=False)[1].close()
            reader = readers[shard] = ShardReader(self.root / shard)
        readers.move_to_end(shard)
        return reader

    def _sample(self, files: dict[str, bytes], key: str, epoch: int) -> dict[str, Any]:
        # Conversions run in numpy/OpenCV: on tensors this small, torch's per-op overhead (and
        # thread-pool wake-ups in a busy DataLoader worker) costs more than the work.
        record = decode_members(files)
        drop_text, drop_identity, drop_hint = dropout_decisions(self.dropout, self.seed, epoch, key)
        size = self.image_size
        image, mask, hint = record["image"], record["face_mask"], record["hint"].astype(np.float32)
        if size != image.shape[0]:
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
            hint = _resize_channels_area(hint, size)
        pixel_values = image.transpose(2, 0, 1).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        if self.clip_image_processor is not None:
            clip_pixel_values = self.clip_image_processor(images=[record["clip_crop"]], return_tensors="np").pixel_values.astype(np.float32)
        else:
            clip_pixel_values = record["clip_crop"].transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255.0)
        face_embeds = record["face_embedding"].astype(np.float32)[None]
        if drop_identity:
            clip_pixel_values = np.zeros_like(clip_pixel_values)
            face_embeds = np.zeros_like(face_embeds)
        if drop_hint:
            hint = np.zeros_like(hint)
        return {
            "pixel_values": torch.from_numpy(np.ascontiguousarray(pixel_values)),
            "clip_pixel_values": torch.from_numpy(np.ascontiguousarray(clip_pixel_values)),
            "face_embeds": torch.from_numpy(face_embeds),
            "face_mask": torch.from_numpy(mask.astype(np.float32)[None]),
            "hint": torch.from_numpy(np.ascontiguousarray(hint)),
            "caption": "" if drop_text else record["caption"],
            "drop_text": torch.tensor(drop_text),
            "drop_identity": torch.tensor(drop_identity),
            "drop_hint": torch.tensor(drop_hint),
            "key": key,
        }

    def _stored_size(self) -> int:
        settings = read_dataset_settings(self.root) or {}
        if "image_size" in settings:
            return int(settings["image_size"])
        first = self.entries[0]
        with ShardReader(self.root / first.shard) as reader:
            return int(decode_members(reader.read_files(first.key, (IMAGE_SUFFIX,)))["image"].shape[0])


def _resize_channels_area(planes: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) float32 -> (C, size, size) by area averaging, three channels per OpenCV call
    (OpenCV resizes at most 4 channels at a time for non-integer factors)."""
    parts = [
        cv2.resize(np.ascontiguousarray(planes[start : start + 3].transpose(1, 2, 0)), (size, size), interpolation=cv2.INTER_AREA)
        for start in range(0, planes.shape[0], 3)
    ]
    return np.concatenate([part.reshape(size, size, -1).transpose(2, 0, 1) for part in parts], axis=0)


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors of a list of samples along a new batch dim; strings become lists."""
    if not batch:
        raise ValueError("collate got an empty batch.")
    out: dict[str, Any] = {}
    for name, value in batch[0].items():
        values = [sample[name] for sample in batch]
        out[name] = torch.stack(values) if isinstance(value, torch.Tensor) else list(values)
    return out


def split_keys(entries: Sequence[IndexEntry], val_size: int | float) -> tuple[list[str], list[str]]:
    """(train keys, validation keys): validation is the first ``val_size`` keys in sorted order.

    Keys are SHA-1 hashes of the photo paths, so sorted order is a fixed pseudo-random sample.
    ``val_size``: an int is a count, a float in (0, 1) a fraction of the records, 0 no validation.
    """
    keys = sorted({entry.key for entry in entries})
    if isinstance(val_size, float) and not val_size.is_integer():
        if not 0.0 < val_size < 1.0:
            raise ConfigError(f"val_size as a fraction must be in (0, 1), got {val_size}.")
        count = max(1, int(round(val_size * len(keys))))
    else:
        count = int(val_size)
    if count < 0 or (count > 0 and count >= len(keys)):
        raise ConfigError(f"val_size {val_size} leaves no training records out of {len(keys)}.")
    return keys[count:], keys[:count]


class CapHumanDataModule(pl.LightningDataModule):
    """Train/validation data for Lightning from one dataset folder.

    Args:
        root: dataset folder.
        batch_size: samples per batch (per device).
        num_workers: DataLoader worker processes (per device).
        image_size, clip_image_processor, dropout, seed: see :class:`CapHumanDataset`.
        val_size: validation records: a count, a fraction in (0, 1), or 0 for none
            (see :func:`split_keys`). Validation data has no dropout and a fixed order.
        repeat: the training stream loops forever (step-based training with max_steps).
        pin_memory: DataLoader pin_memory (worth it on CUDA).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        batch_size: int = 4,
        num_workers: int = 0,
        image_size: int = 512,
        clip_image_processor=None,
        dropout: ConditionDropout | None = None,
        seed: int = 0,
        val_size: int | float = 0,
        repeat: bool = True,
        pin_memory: bool = False,
    ):
        super().__init__()
        self.root = Path(root)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.clip_image_processor = clip_image_processor
        # A fresh default per object: a shared default instance would carry one's edits to the next.
        self.dropout = dropout if dropout is not None else ConditionDropout()
        self.seed = seed
        self.val_size = val_size
        self.repeat = repeat
        self.pin_memory = pin_memory
        self.train_dataset: CapHumanDataset | None = None
        self.val_dataset: CapHumanDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            self._build()
        # Lightning's rank, not the environment's: correct for every strategy and launcher.
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            for dataset in (self.train_dataset, self.val_dataset):
                if dataset is not None:
                    dataset.set_distributed(trainer.global_rank, trainer.world_size)

    def _build(self) -> None:
        train_keys, val_keys = split_keys(read_index(self.root), self.val_size)
        common = dict(image_size=self.image_size, clip_image_processor=self.clip_image_processor)
        self.train_dataset = CapHumanDataset(
            self.root, dropout=self.dropout, seed=self.seed, shuffle=True, repeat=self.repeat, keys=train_keys, **common
        )
        if val_keys:
            self.val_dataset = CapHumanDataset(
                self.root, dropout=ConditionDropout(0.0, 0.0, 0.0), seed=self.seed, shuffle=False, repeat=False, keys=val_keys, **common
            )
        logger.info("Dataset %s: %d training and %d validation records.", self.root, len(train_keys), len(val_keys))

    def set_epoch(self, epoch: int) -> None:
        """Call from LightningModule.on_train_epoch_start (before the epoch's iterator starts)."""
        if self.train_dataset is not None:
            self.train_dataset.set_epoch(epoch)

    def skip_batches(self, num_batches: int) -> None:
        """Resume mid-stream: skip the training batches already seen (see CapHumanDataset.skip_batches)."""
        self.setup()
        self.train_dataset.skip_batches(num_batches, self.batch_size)

    def _loader(self, dataset: CapHumanDataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
            # Not persistent: workers get a fresh copy of the dataset (with its current epoch
            # and skip) each time an iterator starts.
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_dataset)

    def val_dataloader(self) -> list | DataLoader:
        self.setup()
        return self._loader(self.val_dataset) if self.val_dataset is not None else []
