"""The machine: the one clock, the one NVML boundary, the device sampler, CPU time and the
environment snapshot. Reads hardware; knows nothing of experiments."""
