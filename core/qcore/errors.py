"""Every error qcore raises on purpose. Each message says what is wrong and what to do."""

from __future__ import annotations


class QcoreError(Exception):
    """Base class of all qcore errors."""


# --- plugins -----------------------------------------------------------------
class PluginError(QcoreError):
    """A plugin could not be loaded or registered."""


class DuplicateMethodError(PluginError):
    """Two installed plugins claim the same quantization method."""


class MethodNotInstalledError(QcoreError):
    """A quantization method was asked for whose plugin is not installed."""


# --- configuration -----------------------------------------------------------
class ConfigError(QcoreError, ValueError):
    """A quantization config is invalid: unknown key, bad value, bad combination."""


# --- checkpoints -------------------------------------------------------------
class CheckpointError(QcoreError):
    """A checkpoint cannot be read as asked."""


class CorruptCheckpointError(CheckpointError):
    """A safetensors file is truncated, malformed, or its header lies."""


class MissingShardError(CheckpointError):
    """The index names a shard file that is not there."""


class TensorMismatchError(CheckpointError):
    """A checkpoint tensor's shape or dtype does not fit the model skeleton."""


class MissingKeysError(CheckpointError):
    """The checkpoint lacks tensors the model needs (or has ones it cannot place)."""


class NonFiniteWeightError(QcoreError, ValueError):
    """A float tensor to be quantized holds NaN or Inf."""


class TargetExistsError(QcoreError, FileExistsError):
    """save_quantized was pointed at an existing path without overwrite=True."""


# --- calibration -------------------------------------------------------------
class CalibrationError(QcoreError):
    """Calibration data is missing, too short, or does not fit the model."""
