#!/usr/bin/env python
"""Segment your own images with your own vocabulary (same as the ``partcatseg-demo`` command).

    python tools/demo.py --config-file configs/zero_shot/partcatseg_voc.yaml \
        --input my_photos/ --output out/ --objects "cat: head, ear, tail" MODEL.WEIGHTS partcatseg_voc

See ``python tools/demo.py --help`` and partcatseg/cli/demo.py.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from partcatseg.cli.demo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
