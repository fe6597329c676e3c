"""eBPF live container sensor: every exec on the host as an ECS document, ssh-in-container alerts."""

__version__ = "0.1.0"
