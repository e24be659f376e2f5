"""Training CapFace + the identity projections with Lightning (see docs/TRAINING.md).

- :mod:`caphuman.training.config`: TrainConfig (model + sampling + training), load_train_config.
- :mod:`caphuman.training.module`: CapHumanTrainingModule (the loss), ResumableBatches (the batch
  stream; exact resume through the dataset's skip_batches).
- :mod:`caphuman.training.callbacks`: EMA, validation sample grids, export.
- :mod:`caphuman.training.export`: adapter export in the format `caphuman sample` loads.
- the run itself (trainer, loggers, checkpoints): :func:`caphuman.commands.train.train`.
"""

from caphuman.training.config import TrainConfig, TrainingConfig, load_train_config

__all__ = ["TrainConfig", "TrainingConfig", "load_train_config"]
