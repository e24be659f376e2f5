"""CapHumanDataset / collate / CapHumanDataModule on a small synthetic dataset (no face models).

Records are random arrays written with the real ShardWriter, so every expected value below is
computed from the stored arrays independently of the dataset code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from caphuman.data.dataset import CapHumanDataModule, CapHumanDataset, ConditionDropout, collate, dropout_decisions
from caphuman.data.records import FaceRecord, record_key
from caphuman.data.shards import ShardReader, ShardWriter, read_index
from caphuman.errors import ConfigError
from caphuman.models.backbone import clip_image_processor
from tests.synthetic import empty_head_params

STORED_SIZE = 32
NUM_RECORDS = 23
SHARD_SIZE = 4  # -> 6 shards, the last one with 3 records
EMBEDDING_DIM = 8
NO_DROPOUT = ConditionDropout(0.0, 0.0, 0.0)


def synthetic_record(index: int) -> FaceRecord:
    rng = np.random.default_rng(index)
    size = STORED_SIZE
    hint = np.zeros((9, size, size), np.float16)
    hint[:3, 8:24, 8:24] = rng.uniform(-1, 1, (3, 16, 16))
    hint[3:, 8:24, 8:24] = rng.uniform(0, 1, (6, 16, 16))
    mask = np.zeros((size, size), np.uint8)
    mask[10:22, 9:23] = 1
    return FaceRecord(
        key=record_key(f"person_{index:03d}.jpg"),
        image=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        clip_crop=rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        face_embedding=(rng.standard_normal(EMBEDDING_DIM) + 0.1).astype(np.float32),
        face_mask=mask,
        hint=hint,
        head_params=empty_head_params(),
        caption=f"a photo of person {index}",
        source=f"person_{index:03d}.jpg",
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dataset")
    writer = ShardWriter(folder, shard_size=SHARD_SIZE)
    for index in range(NUM_RECORDS):
        writer.add_record(synthetic_record(index))
    writer.commit()
    return folder


@pytest.fixture(scope="module")
def stored(root):
    records = {}
    for entry in read_index(root):
        with ShardReader(root / entry.shard) as reader:
            records[entry.key] = reader.read(entry.key)
    return records


def test_samples_have_the_documented_keys_shapes_and_values(root, stored):
    processor = clip_image_processor(32)
    dataset = CapHumanDataset(root, image_size=STORED_SIZE, clip_image_processor=processor, dropout=NO_DROPOUT, shuffle=False)
    samples = list(dataset)
    assert [sample["key"] for sample in samples] == [entry.key for entry in read_index(root)]
    sample = samples[0]
    record = stored[sample["key"]]
    assert set(sample) == {
        "pixel_values",
        "clip_pixel_values",
        "face_embeds",
        "face_mask",
        "hint",
        "caption",
        "drop_text",
        "drop_identity",
        "drop_hint",
        "key",
    }
    assert sample["pixel_values"].shape == (3, STORED_SIZE, STORED_SIZE) and sample["pixel_values"].dtype == torch.float32
    expected_pixels = torch.from_numpy(record.image).permute(2, 0, 1).float() / 127.5 - 1.0
    torch.testing.assert_close(sample["pixel_values"], expected_pixels)
    assert sample["pixel_values"].min() >= -1.0 and sample["pixel_values"].max() <= 1.0
    assert sample["clip_pixel_values"].shape == (1, 3, 32, 32)
    torch.testing.assert_close(sample["clip_pixel_values"], processor(images=[record.clip_crop], return_tensors="pt").pixel_values)
    assert sample["face_embeds"].shape == (1, EMBEDDING_DIM)
    torch.testing.assert_close(sample["face_embeds"][0], torch.from_numpy(record.face_embedding))
    assert sample["face_mask"].shape == (1, STORED_SIZE, STORED_SIZE)
    assert set(sample["face_mask"].unique().tolist()) == {0.0, 1.0}
    assert sample["hint"].dtype == torch.float32 and sample["hint"].shape == (9, STORED_SIZE, STORED_SIZE)
    torch.testing.assert_close(sample["hint"], torch.from_numpy(record.hint.astype(np.float32)))
    assert sample["caption"] == record.caption
    assert sample["drop_identity"].dtype == torch.bool and not sample["drop_identity"]


def test_smaller_image_size_is_resized_on_the_fly(root, stored):
    sample = next(iter(CapHumanDataset(root, image_size=16, dropout=NO_DROPOUT, shuffle=False)))
    record = stored[sample["key"]]
    # Area resampling by 2 is the mean of each 2x2 block.
    blocks = record.image.astype(np.float64).reshape(16, 2, 16, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(((sample["pixel_values"].permute(1, 2, 0).numpy() + 1) * 127.5), blocks, atol=0.51)
    hint_blocks = record.hint.astype(np.float32).reshape(9, 16, 2, 16, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(sample["hint"].numpy(), hint_blocks, atol=1e-3)
    assert sample["face_mask"].shape == (1, 16, 16) and set(sample["face_mask"].unique().tolist()) <= {0.0, 1.0}
    assert sample["face_mask"].sum() == pytest.approx(record.face_mask.sum() / 4, rel=0.2)
    # Without a processor the crop comes as is, scaled to [0, 1].
    torch.testing.assert_close(sample["clip_pixel_values"][0], torch.from_numpy(record.clip_crop).permute(2, 0, 1).float() / 255)
    with pytest.raises(ConfigError, match="larger than"):
        CapHumanDataset(root, image_size=64)


def test_dropout_rates_hold_and_zero_the_dropped_conditions():
    dropout = ConditionDropout(text=0.3, identity=0.2, hint=0.1)
    decisions = np.array([dropout_decisions(dropout, 7, epoch, record_key(f"p{i}")) for epoch in range(5) for i in range(2000)])
    # 10,000 draws: the binomial standard deviation is at most 0.005.
    np.testing.assert_allclose(decisions.mean(axis=0), [0.3, 0.2, 0.1], atol=0.02)
    # Independent conditions: both text and identity dropped about 0.3 x 0.2 of the time.
    assert abs((decisions[:, 0] & decisions[:, 1]).mean() - 0.06) < 0.015


def test_dropped_conditions_are_zeroed_and_flagged(root, stored):
    dataset = CapHumanDataset(root, image_size=STORED_SIZE, dropout=ConditionDropout(0.5, 0.5, 0.5), seed=3, repeat=True)
    seen = {"text": 0, "identity": 0, "hint": 0}
    for sample, _ in zip(dataset, range(4 * NUM_RECORDS), strict=False):
        record = stored[sample["key"]]
        drop_text = sample["caption"] == ""
        assert drop_text == bool(sample["drop_text"])
        if sample["drop_identity"]:
            assert not sample["face_embeds"].any() and not sample["clip_pixel_values"].any()
        else:
            assert sample["face_embeds"].abs().sum() > 0 and sample["clip_pixel_values"].abs().sum() > 0
        assert bool(sample["drop_hint"]) == (not sample["hint"].any())
        assert sample["pixel_values"].abs().sum() > 0 and torch.equal(sample["face_mask"][0], torch.from_numpy(record.face_mask).float())
        seen["text"] += drop_text
        seen["identity"] += bool(sample["drop_identity"])
        seen["hint"] += bool(sample["drop_hint"])
    assert all(20 < count < 72 for count in seen.values()), seen  # about half of 92 each


def _stream(dataset: CapHumanDataset, count: int) -> list[tuple[str, bool, bool, bool]]:
    return [(s["key"], bool(s["drop_text"]), bool(s["drop_identity"]), bool(s["drop_hint"])) for s, _ in zip(dataset, range(count), strict=False)]


def test_order_and_dropout_are_deterministic_for_a_seed(root):
    dropout = ConditionDropout(0.3, 0.3, 0.3)
    first = _stream(CapHumanDataset(root, image_size=16, dropout=dropout, seed=11, repeat=True), 2 * NUM_RECORDS)
    again = _stream(CapHumanDataset(root, image_size=16, dropout=dropout, seed=11, repeat=True), 2 * NUM_RECORDS)
    other = _stream(CapHumanDataset(root, image_size=16, dropout=dropout, seed=12, repeat=True), 2 * NUM_RECORDS)
    assert first == again
    assert first != other
    # Shuffled, and each pass (epoch) is a new permutation of every record.
    keys = [item[0] for item in first]
    assert sorted(keys[:NUM_RECORDS]) == sorted(keys[NUM_RECORDS:]) and keys[:NUM_RECORDS] != keys[NUM_RECORDS:]
    # set_epoch selects the epoch: epoch 1 alone equals the second pass of the repeated stream.
    epoch_one = CapHumanDataset(root, image_size=16, dropout=dropout, seed=11)
    epoch_one.set_epoch(1)
    assert _stream(epoch_one, NUM_RECORDS) == first[NUM_RECORDS:]


@pytest.mark.parametrize("world_size,num_workers", [(1, 1), (2, 2), (3, 1), (2, 3), (4, 2)])
def test_every_record_is_read_exactly_once_across_ranks_and_workers(root, world_size, num_workers):
    # 6 shards: 1-6 slots read whole shards, 8-9 slots split records.
    keys = []
    for rank in range(world_size):
        dataset = CapHumanDataset(root, image_size=16, dropout=NO_DROPOUT, seed=5)
        dataset.set_distributed(rank, world_size)
        for plan_slot in range(num_workers):
            keys.extend(key for _, key in dataset.plan(0, rank * num_workers + plan_slot, world_size * num_workers))
    assert sorted(keys) == sorted(entry.key for entry in read_index(root))


def test_dataloader_workers_and_ranks_cover_every_record_once(root):
    keys = []
    for rank in range(2):
        dataset = CapHumanDataset(root, image_size=16, dropout=NO_DROPOUT, seed=5)
        dataset.set_distributed(rank, 2)
        for batch in DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate):
            assert batch["pixel_values"].shape[1:] == (3, 16, 16) and batch["face_embeds"].shape[1:] == (1, EMBEDDING_DIM)
            assert isinstance(batch["caption"], list) and batch["drop_identity"].shape == (len(batch["key"]),)
            keys.extend(batch["key"])
    assert sorted(keys) == sorted(entry.key for entry in read_index(root))


@pytest.mark.parametrize("num_workers,skipped", [(0, 5), (2, 5), (3, 4)])
def test_skip_batches_resumes_the_same_stream(root, num_workers, skipped):
    def batches(dataset, count):
        loader = DataLoader(dataset, batch_size=3, num_workers=num_workers, collate_fn=collate)
        return [batch["key"] + batch["caption"] for batch, _ in zip(loader, range(count), strict=False)]

    dropout = ConditionDropout(0.5, 0.5, 0.0)
    full = batches(CapHumanDataset(root, image_size=16, dropout=dropout, repeat=True), 12)
    resumed_dataset = CapHumanDataset(root, image_size=16, dropout=dropout, repeat=True)
    resumed_dataset.skip_batches(skipped, batch_size=3)
    assert batches(resumed_dataset, 12 - skipped) == full[skipped:]


def test_data_module_splits_and_batches(root):
    module = CapHumanDataModule(root, batch_size=4, num_workers=0, image_size=16, val_size=5, dropout=NO_DROPOUT, repeat=False)
    module.setup("fit")
    train_keys = {key for batch in module.train_dataloader() for key in batch["key"]}
    val_batches = list(module.val_dataloader())
    val_keys = [key for batch in val_batches for key in batch["key"]]
    assert len(val_keys) == 5 and not train_keys & set(val_keys)
    assert train_keys | set(val_keys) == {entry.key for entry in read_index(root)}
    assert set(val_keys) == set(sorted(entry.key for entry in read_index(root))[:5])  # the first keys in sorted order
    assert [key for batch in module.val_dataloader() for key in batch["key"]] == val_keys  # in a fixed order
    assert val_batches[0]["pixel_values"].shape == (4, 3, 16, 16)
    fraction = CapHumanDataModule(root, image_size=16, val_size=0.25)
    fraction.setup()
    assert fraction.val_dataset.num_records == round(0.25 * NUM_RECORDS)
    assert CapHumanDataModule(root, image_size=16).val_dataloader() == []
