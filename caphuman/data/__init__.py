"""Training data: preprocessing photos into sharded records, and the dataset that streams them.

- :mod:`caphuman.data.records`: :class:`FaceRecord`, one training example, and its file layout.
- :mod:`caphuman.data.shards`: the dataset folder (index.jsonl + tar shards), writer and reader.
- :mod:`caphuman.data.preprocess`: photos -> records (`caphuman preprocess`).
- :mod:`caphuman.data.dataset`: :class:`CapHumanDataset`, :func:`collate`, :class:`CapHumanDataModule`.

Import from the submodules; this package imports nothing heavy itself.
"""
