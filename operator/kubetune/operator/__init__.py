"""The kopf operator: FineTuneJob spec → plan → manifests → cluster → status.

Pure parts (naming, manifests, observe) are testable without a cluster; `kube.py` does
the API I/O and `handlers.py` wires kopf to `reconcile.py`.
"""
