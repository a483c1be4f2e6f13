"""Trivial steps for the null-build benchmark: each writes a digest of its inputs."""
