"""Judging: the one verdict function, two runs compared, the CI gate (baseline and A/B), history."""
