"""kubetune: a Kubernetes operator that plans and runs LLM fine-tuning jobs."""

__version__ = "0.1.0"
