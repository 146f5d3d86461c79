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


class TrackingError(EffiFusionError):
    """The MLflow tracking store cannot be reached or refused a request."""


def user_message(exc: BaseException) -> str | None:
    """The one line to print for an error the user can act on, or None for a bug (keep the traceback).

    MLflow's own exceptions (a store that went away mid-run, a refused request) count as the user's:
    their first line says what the store answered.
    """
    if isinstance(exc, EffiFusionError):
        return str(exc)
    if type(exc).__module__.startswith("mlflow.") and type(exc).__name__.endswith("Exception"):
        text = str(exc).strip()
        return f"MLflow: {text.splitlines()[0] if text else type(exc).__name__}"
    return None
