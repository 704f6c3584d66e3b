"""Training: settings, the fine-tuning recipe, checkpoints, metrics and the worker thread."""
