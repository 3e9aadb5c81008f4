"""The one error hierarchy of ct2pet-node.

Every message names the bad value and says what to do about it. Code that
catches broadly (thread top levels, the CLI) catches :class:`Ct2PetError`
for expected failures and logs anything else with its traceback.
"""


class Ct2PetError(Exception):
    """Base of every error the product raises on purpose."""


class ConfigError(Ct2PetError):
    """The configuration is unusable; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


class InputError(Ct2PetError):
    """An input object (a DICOM instance, a file, a folder) cannot be used."""


class SeriesRefused(Ct2PetError):
    """A complete series failed qualification; the message is the reason kept in the job store."""


class StorageError(Ct2PetError):
    """The spool, the job store or the outbox could not be written or read."""


class OutOfSpace(StorageError):
    """The data directory is at its free-space watermark."""


class WeightsError(Ct2PetError):
    """A weights directory or a release checkpoint is missing, truncated, tampered or incompatible."""


class EngineError(Ct2PetError):
    """The engine could not translate a volume (device, memory, non-finite output)."""


class DeliveryError(Ct2PetError):
    """A destination refused or could not be reached."""


class IllegalTransition(Ct2PetError):
    """A job state change that :data:`ct2pet_node.domain.jobs.TRANSITIONS` does not allow.

    Raised by the job store's one writer before anything is written; reaching
    it is a bug in the caller, never an operator's mistake (operator commands
    check the state first and say what they can do).
    """


class EngineUnavailable(EngineError):
    """The engine cannot take work now (its Ray cluster is unreachable); the job waits, it does not fail."""


class SourceError(Ct2PetError):
    """A source (``[[sources]]``) could not be reached, refused a query or retrieval, or sent too little."""
