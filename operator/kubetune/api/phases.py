"""The words of a FineTuneJob's status: phases, condition types and reasons.

One module owns them. The status schema (and so the CRD's enum), the operator, the CLI,
the metrics and the trainer's progress reports import them from here; the Argo CD health
Lua (charts/kubetune/files/argocd-health.lua) cannot import, so a test checks that it
names exactly these phases.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """Where a FineTuneJob is in its life (`status.phase`)."""

    PENDING = "Pending"
    PLANNING = "Planning"
    QUEUED = "Queued"
    RUNNING = "Running"
    EVALUATING = "Evaluating"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"

    @property
    def active(self) -> bool:
        """The operator is still working towards the spec (kstatus: Reconciling)."""
        return self in ACTIVE_PHASES

    @property
    def final(self) -> bool:
        """Nothing will change any more."""
        return self in FINAL_PHASES


ACTIVE_PHASES = frozenset(
    {Phase.PENDING, Phase.PLANNING, Phase.QUEUED, Phase.RUNNING, Phase.EVALUATING}
)
FINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class ConditionType(StrEnum):
    """`status.conditions[].type`. The last four are the ones GitOps tools read:
    Ready/Reconciling/Stalled are kstatus' (Flux), Suspended is Argo CD's and Kueue's word."""

    VALID = "Valid"
    PLANNED = "Planned"
    LAUNCHED = "Launched"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    EVALUATION_PASSED = "EvaluationPassed"
    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    SUSPENDED = "Suspended"
    DATA_WARNING = "DataWarning"
    """A rule of thumb about the data or the baselines warns (status.advice)."""


class Reason(StrEnum):
    """The operator's own `reason`s, on conditions and Events. Reasons that come from
    Kubernetes (ErrImagePull, Evicted, ...) or from the trainer's exit (BadInput,
    OutOfMemory, ...) are passed through as they are."""

    # spec and planning
    VALID = "Valid"
    INVALID_SPEC = "InvalidSpec"
    SPEC_CHANGED = "SpecChanged"
    PLANNING = "Planning"
    PLANNED = "Planned"
    NOTHING_FITS = "NothingFits"
    MODEL_CONFIG_INVALID = "ModelConfigInvalid"
    MODEL_CONFIG_UNREADABLE = "ModelConfigUnreadable"
    MODEL_SOURCE_UNREACHABLE = "ModelSourceUnreachable"
    REPLANNED_AFTER_OOM = "ReplannedAfterOOM"
    DATASET_NOT_COUNTED = "DatasetNotCounted"
    # launching and waiting
    LAUNCHED = "Launched"
    PODS_PENDING = "PodsPending"
    QUEUED = "Queued"
    WAITING_FOR_CAPACITY = "WaitingForCapacity"
    NO_CAPACITY = "NoCapacity"
    """Waited for capacity past the operator's grace period: Stalled, still waiting."""
    QUOTA_EXCEEDED = "QuotaExceeded"
    """The Job controller cannot create pods: a ResourceQuota is full. Waits (progress)."""
    PODS_FORBIDDEN = "PodsForbidden"
    """The API server refuses the trainer pods for good (admission: a missing PriorityClass
    or ServiceAccount, PodSecurity, a webhook): Failed with the API server's message."""
    VOLUME_NOT_FOUND = "VolumeNotFound"
    CONFIG_ERROR = "ConfigError"
    OUTPUT_CLAIM_NOT_SHARED = "OutputClaimNotShared"
    WAITING_FOR_PREVIOUS_JOB = "WaitingForPreviousJob"
    WAITING_FOR_STALE_CHILDREN = "WaitingForStaleChildren"
    """A child's name is taken by a deleted namesake's object (another UID), not yet
    garbage-collected: never adopted, waited out."""
    PREVIOUS_JOB_UNUSABLE = "PreviousJobUnusable"
    # running
    RUNNING = "Running"
    EVALUATING = "Evaluating"
    FINISHING = "Finishing"
    SUSPENDED = "Suspended"
    NOT_SUSPENDED = "NotSuspended"
    RESUMED = "Resumed"
    BACKOFF_BEFORE_RETRY = "BackoffBeforeRetry"
    RESTARTING = "Restarting"
    DISRUPTED = "Disrupted"
    """A trainer pod was evicted, preempted or deleted: relaunched without spending one of
    maxRestarts (the trainer did not fail)."""
    # the end
    COMPLETED = "Completed"
    EVALUATION_PASSED = "EvaluationPassed"
    EVALUATION_GATE_FAILED = "EvaluationGateFailed"
    NOT_CHECKED = "NotChecked"
    NO_WARNINGS = "NoWarnings"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    OUT_OF_MEMORY = "OutOfMemory"
    HOST_OUT_OF_MEMORY = "HostOutOfMemory"
    """The kernel OOM-killed a trainer container (host memory, not GPU memory)."""


class TrainerPhase(StrEnum):
    """What rank 0 says it is doing in its progress reports."""

    TRAINING = "training"
    EVALUATING = "evaluating"
