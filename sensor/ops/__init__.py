"""Beside the pipeline, for the operator: logs, metrics and the health server, systemd liveness, and the checks
that say whether the sensor can run on a node."""
