"""Condition dropout for classifier-free guidance: it lives with the data (as in IP-Adapter), and
the training config holds the same dataclass, so the rates are defined once."""

from __future__ import annotations

from dataclasses import dataclass

from caphuman.errors import ConfigError


@dataclass
class ConditionDropout:
    """Probabilities of dropping each condition of a training sample, independently.

    Defaults: 5 % text and 5 % identity, as IP-Adapter-style adapters train for classifier-free
    guidance; the hint is kept (CapHuman's sampler never drops it).
    """

    text: float = 0.05
    identity: float = 0.05
    hint: float = 0.0

    def __post_init__(self) -> None:
        for name in ("text", "identity", "hint"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"dropout.{name} must be a probability in [0, 1], got {value}.")
