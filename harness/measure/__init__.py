"""One case measured and checked where it runs: the checked call, accuracy, guards, memory, timing/
(CPU, CUDA, contention, telemetry) and machine/ (environment, ceilings)."""
