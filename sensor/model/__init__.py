"""Stage 2, what the sensor knows: the probe's records, the process table, sessions and leaders, the host's facts.
Plain data and state: nothing here knows about ECS, outputs or the kernel."""
