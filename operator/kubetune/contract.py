"""The operator ↔ trainer contract: env names, mount paths, exit codes, messages.

Both sides import this module, so a rename breaks loudly in tests instead of silently in
a cluster. Users may not set env vars whose names are reserved here.
"""

from __future__ import annotations

import hashlib
import json
import signal
from enum import IntEnum

from pydantic import Field

from .api.base import ApiModel
from .api.phases import TrainerPhase
from .api.spec import FineTuneJobSpec
from .api.status import Advice, CheckpointStatus, EvaluationStatus, OutputStatus, Progress

# --------------------------------------------------------------------------- env
# Only what the trainer reads: the job, the attempt and the progress target are in the
# config file itself (kubetune.api.trainer_config), not repeated as env.
ENV_CONFIG = "KUBETUNE_CONFIG"  # path of the resolved TrainerConfig (YAML)
ENV_PVC_ROOT = "KUBETUNE_PVC_ROOT"  # where PVC claims are mounted, one dir per claim
ENV_TERMINATION_LOG = "KUBETUNE_TERMINATION_LOG"  # override of /dev/termination-log
ENV_HF_TOKEN = "HF_TOKEN"  # from tokenSecretRef; huggingface_hub reads it too
ENV_HF_PUSH_TOKEN = "KUBETUNE_HF_PUSH_TOKEN"  # from output.hf.tokenSecretRef (write access)
# torchrun / accelerate rendezvous (the names torch.distributed uses)
ENV_MASTER_ADDR = "MASTER_ADDR"
ENV_MASTER_PORT = "MASTER_PORT"
ENV_NNODES = "NNODES"
ENV_NODE_RANK = "NODE_RANK"
ENV_NPROC_PER_NODE = "NPROC_PER_NODE"
RESERVED_ENV = frozenset(
    {
        ENV_CONFIG,
        ENV_PVC_ROOT,
        ENV_TERMINATION_LOG,
        ENV_MASTER_ADDR,
        ENV_MASTER_PORT,
        ENV_NNODES,
        ENV_NODE_RANK,
        ENV_NPROC_PER_NODE,
    }
)

# --------------------------------------------------------------------------- paths
CONFIG_DIR = "/etc/kubetune"
CONFIG_FILE = "trainer-config.yaml"
PVC_ROOT = "/mnt/kubetune/pvc"
OUTPUT_DIR = "/mnt/kubetune/output"  # where the output PVC (or scratch) is mounted
SCRATCH_DIR = "/tmp/kubetune"
TOKEN_DIR = "/var/run/secrets/kubetune"
TOKEN_FILE = "token"
TOKEN_AUDIENCE = "kubetune"
TERMINATION_LOG = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096  # the kubelet truncates at 4 KiB
DEFAULT_MASTER_PORT = 29500
PROGRESS_PATH = "/v1/progress"  # on the operator's progress port

# --------------------------------------------------------------------------- identity
IDENTITY_FILE = "run-identity.json"
"""In the output directory: whose checkpoints and baseline.json are there ({uid, specHash,
job}). A run resumes only checkpoints whose identity is its own."""
SUPERSEDED_DIR = "superseded"
"""Where a run moves another job's checkpoints and baseline.json (`superseded/<uid>/`)."""
FOREIGN_CHECKPOINTS = "foreignCheckpointsIgnored"
"""The advice code (status.advice, and the Event reason ForeignCheckpointsIgnored) saying
that another job's checkpoints were moved aside rather than resumed."""


def spec_hash(spec: FineTuneJobSpec) -> str:
    """The spec's fingerprint, binding checkpoints to what they were trained for: computed
    here only, by the operator (into the trainer config) and by a trainer run by hand.
    `suspend` is left out: suspending and resuming is the same run."""
    doc = spec.model_dump(by_alias=True, mode="json", exclude={"suspend"})
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- image
TRAINER_ENTRYPOINT = ("python", "-m", "kubetune_trainer")
"""The trainer image's ENTRYPOINT (checked against trainer-image/Dockerfile by a test)."""
TRAINER_LAUNCH_ARGS = ("launch", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}")
"""The trainer pods' args: each node's launcher starts that node's training processes."""

# --------------------------------------------------------------------------- labels
LABEL_JOB = "kubetune.io/job"
LABEL_JOB_UID = "kubetune.io/job-uid"  # the FineTuneJob's UID: a re-created job's differs
LABEL_ATTEMPT = "kubetune.io/attempt"
LABEL_COMPONENT = "kubetune.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubetune"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


# --------------------------------------------------------------------------- exit codes
class ExitCode(IntEnum):
    """Trainer exit codes; the operator retries only the retryable ones."""

    OK = 0
    ERROR = 1  # unexpected crash: retryable
    BAD_INPUT = 2  # the user's data, model or config is wrong: never retried
    OOM = 3  # out of GPU/host memory: re-plan with a smaller micro-batch
    NAN_LOSS = 4  # loss became NaN/Inf: not retried (same data, same result)
    RETRYABLE = 5  # transient (network, storage, rendezvous): retried
    PREEMPTED = 6  # SIGTERM handled, checkpoint saved: resume later

    @property
    def retryable(self) -> bool:
        return self in (ExitCode.ERROR, ExitCode.OOM, ExitCode.RETRYABLE, ExitCode.PREEMPTED)


OOM_MARKERS = ("out of memory", "CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED")
"""Words of a GPU allocation failure: the trainer classifies an exception by them, and the
operator a rank's message (a rank that wrote no summary of its own)."""


def classify_exit(code: int) -> ExitCode:
    """Maps a container exit code to its meaning; 128+signal (killed) is retryable."""
    try:
        return ExitCode(code)
    except ValueError:
        return ExitCode.ERROR if code < 128 else ExitCode.RETRYABLE


def killed_by(code: int) -> str | None:
    """ "killed by signal 9 (SIGKILL)" when an exit code says a signal ended the process:
    128+N from a container runtime or shell, -N from Python's subprocess; else None.

    Such a process wrote no summary, and its last log line (a loss dict, say) says
    nothing about why it stopped."""
    number = -code if code < 0 else code - 128 if code > 128 else 0
    try:
        name = signal.Signals(number).name
    except ValueError:
        return None
    return f"killed by signal {number} ({name})"


# --------------------------------------------------------------------------- messages
class TerminationSummary(ApiModel):
    """What the trainer writes to its termination log (under 4 KiB) at exit.

    Typed with the status's own models: the operator copies `progress`, `checkpoints`,
    `evaluation` and `output` into `status` as they are, so every key the trainer emits
    is one the CRD schema keeps (a real API server prunes unknown ones). The full report
    lives next to the checkpoints.
    """

    version: int = 1
    exit_code: int = 0
    reason: str = ""
    """CamelCase reason (e.g. Completed, BadInput, OutOfMemory, NaNLoss)."""
    message: str = ""
    """One line for humans; for bad input it names the file and line."""
    step: int | None = None
    """Optimizer steps done when the run stopped."""
    total_steps: int | None = None
    progress: Progress | None = None
    """The last progress figures (status.progress at the end of the run)."""
    checkpoints: CheckpointStatus | None = None
    """Newest complete and best checkpoint (status.checkpoints)."""
    evaluation: EvaluationStatus | None = None
    """Baseline vs tuned, the forgetting verdict and the gate (status.evaluation)."""
    output: OutputStatus | None = None
    """Where the results are (status.output)."""
    data: dict[str, int] = Field(default_factory=dict)
    """The data report's counts (status.data)."""
    advice: list[Advice] = Field(default_factory=list)
    """Rules of thumb that apply (status.advice)."""


class ProgressReport(Progress):
    """What rank 0 posts to the operator every few seconds: status.progress plus whose
    it is, its newest checkpoint and whether it is training or evaluating."""

    namespace: str
    name: str
    uid: str = ""
    """The FineTuneJob's UID: a report from a deleted job of the same name is ignored."""
    attempt: int = 0
    checkpoint: str | None = None
    checkpoint_step: int | None = None
    phase: TrainerPhase | None = None
    """`training` or `evaluating` (the operator's Running or Evaluating phase)."""

    def progress(self) -> Progress:
        """The status.progress part of the report."""
        return Progress.model_validate(self.model_dump(include=set(Progress.model_fields)))
