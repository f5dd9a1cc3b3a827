"""Importing this module fails, as a plugin with a missing dependency would."""

raise RuntimeError("attnbench_broken_plugin is broken on purpose")
