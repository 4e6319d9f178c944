"""Benchmarks of the service and the model, run from the root as `python -m benchmarks.<name>`."""
