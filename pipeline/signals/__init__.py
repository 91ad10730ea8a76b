"""Signals: what a run tells the systems that watch it (metrics, lineage) and the per-partition report."""
