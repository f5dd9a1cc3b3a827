"""Getting cases measured: the runner, the executor seam, the worker process, Ray."""
