"""Launchers: Cloud TPU VM pods, Slurm GPU clusters, and sweeps. Each has a dry-run mode."""
