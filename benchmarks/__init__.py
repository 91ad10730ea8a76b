"""Throughput and memory benchmarks of the scoring pipeline against the model's own limit and two baselines."""
