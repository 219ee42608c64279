"""User-facing errors: the CLI prints these as one line, without a traceback."""


class TwinLMError(Exception):
    """A mistake in the user's input (file, flag, checkpoint) with a message that says what to do."""


class DataError(TwinLMError):
    """A corpus or task file that cannot be read as asked."""


class CheckpointError(TwinLMError):
    """A checkpoint folder that is missing, corrupted or does not match the model."""


class ConfigError(TwinLMError):
    """An invalid configuration value, preset, objective or flag combination."""


class TrainingDiverged(TwinLMError):
    """The loss became NaN or infinite; training stopped before writing a bad checkpoint."""
