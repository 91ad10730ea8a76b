"""Beam transforms and the pure Arrow/numpy column functions they wrap."""
