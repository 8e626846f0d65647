"""The package imports downwards only: no cycles, no forbidden imports, light model imports."""
from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_layer_rules_hold():
    proc = subprocess.run([sys.executable, str(REPO / "tools/check_layers.py"), str(REPO / "partcatseg"),
                           "--rules", str(REPO / "tools/layers.txt")], capture_output=True, text=True)
    last = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0 and last.startswith("OK:") and last.endswith("0 problem(s)"), proc.stdout


def test_layer_check_reports_a_cycle_and_a_forbidden_import(tmp_path):
    pkg = tmp_path / "partcatseg"
    (pkg / "vocab").mkdir(parents=True)
    (pkg / "data").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "vocab" / "__init__.py").write_text("from partcatseg.data import x\n")
    (pkg / "data" / "__init__.py").write_text("from partcatseg.vocab import y\nx = 1\n")
    proc = subprocess.run([sys.executable, str(REPO / "tools/check_layers.py"), str(pkg),
                           "--rules", str(REPO / "tools/layers.txt")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "cycle (2 modules): partcatseg.data <-> partcatseg.vocab" in proc.stdout
    assert "forbidden: partcatseg.vocab imports partcatseg.data (rule vocab !-> data)" in proc.stdout


def test_importing_the_models_loads_no_data_engine_or_tools():
    code = ("import sys; import partcatseg.modeling.partcatseg, partcatseg.modeling.catseg; "
            "print(sorted(m for m in sys.modules if m.startswith(('partcatseg.data', 'partcatseg.engine', "
            "'partcatseg.evaluation', 'partcatseg.inference', 'partcatseg.benchmark', 'partcatseg.cli'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_package_root_holds_the_library_only():
    root = REPO / "partcatseg"
    modules = sorted(p.stem for p in root.glob("*.py"))
    assert modules == ["__init__", "checkpoint", "runtime", "visualize", "weights"]
    packages = sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file())
    assert packages == ["benchmark", "cli", "config", "data", "engine", "evaluation", "inference", "modeling", "vocab"]
    # every command-line entry point (a main()) lives in partcatseg/cli
    for path in root.rglob("*.py"):
        if path.parent.name != "cli":
            assert "\ndef main(" not in path.read_text(), path
