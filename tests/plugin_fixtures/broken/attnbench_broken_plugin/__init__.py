"""A deliberately broken attnbench plugin distribution (see the submodules)."""
