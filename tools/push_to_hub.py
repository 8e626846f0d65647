#!/usr/bin/env python
"""Same as the `partcatseg-push-to-hub` command (see partcatseg/cli/push_to_hub.py and --help)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from partcatseg.cli.push_to_hub import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
