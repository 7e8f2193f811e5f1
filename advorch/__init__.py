"""advorch: distributed data pipelines and adversarial-training orchestration."""

__version__ = "0.1.0"
