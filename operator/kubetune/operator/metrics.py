"""Prometheus metrics served on /metrics (the chart's ServiceMonitor scrapes them)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILE_SECONDS = Histogram(
    "kubetune_reconcile_duration_seconds", "Time spent in one FineTuneJob reconcile"
)
TRANSITIONS = Counter(
    "kubetune_phase_transitions_total", "FineTuneJob phase transitions", ["phase"]
)
JOBS = Gauge("kubetune_jobs", "FineTuneJobs by phase", ["phase"])
API_ERRORS = Counter("kubetune_api_errors_total", "Kubernetes API errors during reconcile")
RESTARTS = Counter("kubetune_restarts_total", "Trainer attempts restarted after a failure")
PLANS = Counter("kubetune_plans_total", "Planner decisions", ["method", "gpu_type"])
GPU_HOURS_REQUESTED = Counter(
    "kubetune_gpu_hours_requested_total",
    "GPU-hours requested at launch (GPUs x activeDeadlineSeconds, where a deadline is set)",
)
