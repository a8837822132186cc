"""Names of the objects a FineTuneJob owns; derived, never stored."""

from __future__ import annotations


def service_name(job: str) -> str:
    """Headless Service for the rendezvous: one per FineTuneJob."""
    return job


def workload_name(job: str, attempt: int) -> str:
    """The Indexed Job of one attempt; a new attempt never reuses a name."""
    return f"{job}-a{attempt}"


def config_name(job: str, attempt: int) -> str:
    """The (immutable) ConfigMap holding one attempt's trainer config."""
    return f"{job}-a{attempt}-config"


def probe_name(job: str, generation: int) -> str:
    """The short-lived pod that reads the model's config.json from a PVC."""
    return f"{job}-probe-g{generation}"


def pod_hostname(job: str, attempt: int, index: int) -> str:
    """Hostname Kubernetes gives an Indexed Job's pod: `<job-name>-<index>`."""
    return f"{workload_name(job, attempt)}-{index}"


def master_address(job: str, namespace: str, attempt: int) -> str:
    """Stable DNS name of rank 0 through the headless Service."""
    return f"{pod_hostname(job, attempt, 0)}.{service_name(job)}.{namespace}.svc"
