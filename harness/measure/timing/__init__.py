"""Timing: CPU blocks and contention, CUDA events, NVML telemetry sampled around them."""
