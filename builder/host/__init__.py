"""This host: the one process runner, probes and shims (what a build host has and lacks), ports."""
