"""Errors users see: each names the file or setting and what is wrong with it."""


class EffiFusionError(Exception):
    """Base class: the CLI prints these as one line instead of a traceback."""


class AudioError(EffiFusionError):
    """A WAV file is unreadable, has the wrong rate or channel count, is silent or not finite."""


class DataError(EffiFusionError):
    """A dataset folder, manifest or log is missing or inconsistent."""


class DownloadError(EffiFusionError):
    """A download failed (network, checksum, archive) and left nothing half-written at its destination
    (a partial download is kept as ``.part`` so the next run resumes)."""


class ConfigError(EffiFusionError):
    """params.yaml or a preset holds a value the pipeline cannot use."""
