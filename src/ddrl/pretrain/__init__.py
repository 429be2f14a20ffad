"""Pretraining of the built-in base models on the shapes world."""
