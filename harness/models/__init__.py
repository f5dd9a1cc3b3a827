"""Attention geometries of real models: a shipped catalogue of published Hugging Face configs
(catalogue/*.json, each with its source) and the user's own `config.json` (configs.py)."""
