#!/usr/bin/env python
"""Speed and memory benchmark (build, text features cold/cached, inference, training step, peak memory).

    python tools/benchmark.py --config-file configs/zero_shot/partcatseg_voc.yaml --repeats 3 --json bench.json

See ``python tools/benchmark.py --help``, partcatseg/benchmark/ and README "Performance".
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from partcatseg.cli.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
