"""What the package needs at run time: SimpleITK is a test-only oracle, so src/ must work without it."""

import ast
import subprocess
import sys
from pathlib import Path

import noduleflow

SRC = Path(noduleflow.__file__).parent


def _module_level_imports(tree: ast.Module) -> set[str]:
    """Top-level modules imported by statements that run at import time (not inside a function or class)."""
    names, todo = set(), list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            todo += [n for field in ("body", "orelse", "finalbody", "handlers") for n in getattr(node, field, [])]
        elif isinstance(node, ast.ExceptHandler):
            todo += node.body
    return names


def test_no_module_of_the_package_imports_simpleitk_when_imported():
    offenders = [
        p.relative_to(SRC).as_posix()
        for p in sorted(SRC.rglob("*.py"))
        if "SimpleITK" in _module_level_imports(ast.parse(p.read_text(encoding="utf-8")))
    ]
    assert offenders == []


def test_synth_writes_and_prepare_reads_a_scan_with_simpleitk_unimportable(tmp_path):
    script = f"""
import sys
sys.modules["SimpleITK"] = None  # any `import SimpleITK` now raises ImportError
from pathlib import Path
import numpy as np
from noduleflow.ct import CtVolume, read_volume
from noduleflow.data import prepare_cache
from noduleflow.synth import layout

out = Path({str(tmp_path)!r})
hu = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 1000
volume = CtVolume(hu, np.array([1.5, -2.0, 3.0]), np.array([0.7, 0.8, 2.5]), np.eye(3), "1.2.3")
mhd = layout.scan_path(out, 0, "1.2.3")
layout.write_scan(out, volume, mhd, layout.code_digest(), {{}})
back = read_volume(mhd)
assert np.array_equal(back.hu, hu) and back.spacing_xyz.tolist() == [0.7, 0.8, 2.5]
print("ok", sorted(p.name for p in mhd.parent.iterdir()))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "ok ['1.2.3.mhd', '1.2.3.raw']"
