"""Evaluating a trained model on the held-out evaluation set."""
