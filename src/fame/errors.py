"""Exception types shared by every stage.

Library code raises these; only the CLI and the HTTP layer turn them into exit or status
codes. Every message says what was wrong, what was expected and how to fix it.
"""

from __future__ import annotations


class FameError(Exception):
    """Base class of every error fame raises on purpose."""


class InputError(FameError):
    """The user's input (a file, a format, an option value) cannot be used as given."""


class ConfigError(InputError):
    """A setting has a value outside what it accepts."""


class TrainingDataError(InputError):
    """The labelled offline data cannot train the detector (e.g. no anomalous labels)."""


class BundleError(FameError):
    """A detector bundle is missing, incomplete, corrupt or of another format version."""
