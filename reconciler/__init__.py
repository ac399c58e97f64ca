"""azp-agents: ephemeral, autoscaled Azure Pipelines agents on Kubernetes."""

__version__ = "0.1.0"
