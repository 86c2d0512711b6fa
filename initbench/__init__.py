"""initbench: compare weight-initialization schemes on real training, logged to MLflow."""

__version__ = "0.1.0"
