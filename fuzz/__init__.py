"""Fuzzing of the decode path, run from the repository root as `python -m fuzz.run`."""
