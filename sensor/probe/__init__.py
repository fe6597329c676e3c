"""Stage 1, the kernel side: loads bpf/sensor.c, finds the kernel's offsets and headers, and reads the ring buffer
into sensor.model.records types."""
