"""Command line: one module per subcommand (main.py wires them); user mistakes exit 2 with one line."""
