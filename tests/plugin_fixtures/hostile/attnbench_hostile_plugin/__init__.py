"""Hostile plugins: hooks that raise or answer nonsense, and a module that exits on import."""
