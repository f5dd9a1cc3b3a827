"""Scenario files: TOML -> validated Scenario -> Cases (each grid expanded by its workload)."""
