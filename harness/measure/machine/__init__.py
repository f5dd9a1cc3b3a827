"""The machine: its environment (CPU, GPUs, software) and its measured ceilings."""
