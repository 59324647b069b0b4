"""Shared test settings."""

import os

# Same as the CLI: OpenMP threads must not spin while tests share two cores (see cli.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
