"""Optimizers, callbacks, MLflow bookkeeping and the training entry."""
