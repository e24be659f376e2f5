"""User-facing errors.

Anything a user can fix (a missing file, a bad config value, a photo without a face) raises a
subclass of :class:`CapHumanError` with one sentence that names the problem. The CLI turns these
into that sentence and exit code 2, without a traceback; everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class CapHumanError(ValueError):
    """A problem with the user's input, config or files; the message is meant to be shown as is."""


class ConfigError(CapHumanError):
    """A config file or value is invalid."""


class MissingWeightsError(CapHumanError):
    """A weights file that the chosen component needs is not on disk."""

    def __init__(self, what: str, path: str, source: str):
        super().__init__(f"Missing {what}: expected at '{path}'; get it from {source}.")
        self.path = path


class InputImageError(CapHumanError):
    """An input photo is missing, unreadable or has no usable face."""
