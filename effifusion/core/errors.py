"""Errors and warnings users see: each names the file or setting and what is wrong with it."""


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


class FilesFailed(EffiFusionError):
    """Some files of a batch failed; all the others were finished first.

    The command has printed one line per failed file; ``failures`` holds the (path, message) pairs
    and ``written`` the outputs that were completed.
    """

    def __init__(self, message: str, failures: list[tuple[str, str]], written: list | None = None):
        super().__init__(message)
        self.failures = list(failures)
        self.written = list(written or [])


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


def say(command: str, kind: str, message: str) -> None:
    """One line on stderr, ``effifusion <command>: <kind>: <message>``, safe beside tqdm progress bars.

    Newlines in ``message`` are folded so each report stays one line (one line per file or problem).
    """
    import sys

    from tqdm import tqdm

    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    tqdm.write(f"effifusion {command}: {kind}: {text}", file=sys.stderr)
