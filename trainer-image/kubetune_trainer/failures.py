"""Why a run stopped, as the exit code and reason the operator acts on.

Every exit path goes through `classify`, so the operator sees the same code for the same
cause whether it was raised by us, by the data pipeline, by torch or by the kernel.
Codes come from `kubetune.contract.ExitCode` (the contract wins over local copies).
"""

from __future__ import annotations

from kubetune.contract import OOM_MARKERS, ExitCode


class TrainerError(Exception):
    """A failure with a known exit code and CamelCase reason; `str()` is for the user."""

    exit_code: ExitCode = ExitCode.ERROR
    reason: str = "Error"


class BadInput(TrainerError):
    """The user's config, model or data is wrong: fix it, retrying will not help."""

    exit_code = ExitCode.BAD_INPUT
    reason = "BadInput"


class NaNLoss(TrainerError):
    """The loss became NaN/Inf; the same data and settings would do it again."""

    exit_code = ExitCode.NAN_LOSS
    reason = "NaNLoss"


class Retryable(TrainerError):
    """A transient failure (rendezvous, storage, network): retry from the checkpoint."""

    exit_code = ExitCode.RETRYABLE
    reason = "Retryable"


class Preempted(TrainerError):
    """SIGTERM arrived; a checkpoint was saved when there was time."""

    exit_code = ExitCode.PREEMPTED
    reason = "Preempted"


def classify(err: BaseException) -> tuple[ExitCode, str, str]:
    """Exit code, reason and a one-line message for any exception."""
    message = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, TrainerError):
        return err.exit_code, err.reason, message
    # The data pipeline's BadInputError (and anything else that states its own code).
    code = getattr(err, "exit_code", None)
    if isinstance(code, int) and code == ExitCode.BAD_INPUT:
        return ExitCode.BAD_INPUT, "BadInput", message
    if isinstance(err, MemoryError) or (
        type(err).__name__ == "OutOfMemoryError" or any(m in str(err) for m in OOM_MARKERS)
    ):
        return ExitCode.OOM, "OutOfMemory", f"out of memory: {message}"
    if isinstance(err, KeyboardInterrupt):
        return ExitCode.PREEMPTED, "Preempted", "interrupted"
    if isinstance(err, ConnectionError | TimeoutError):
        return ExitCode.RETRYABLE, "Retryable", f"{type(err).__name__}: {message}"
    return ExitCode.ERROR, "Error", f"{type(err).__name__}: {message}"
