"""The record (Measurement), its files, the metrics table, and the keys and ceilings read from run.json."""
