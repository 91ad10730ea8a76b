"""Authoring a model: synthetic sample data and training; not part of what scoring workers run."""
