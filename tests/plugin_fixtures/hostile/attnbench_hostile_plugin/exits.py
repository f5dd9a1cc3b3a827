"""Calls sys.exit(0) while being imported: attnbench must report it, not exit 0 with nothing."""

import sys

sys.exit(0)
