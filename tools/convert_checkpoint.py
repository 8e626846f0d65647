#!/usr/bin/env python
"""Same as the `partcatseg-convert-checkpoint` command (see partcatseg/cli/convert_checkpoint.py and --help)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from partcatseg.cli.convert_checkpoint import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
