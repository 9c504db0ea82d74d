"""Rewrite the golden losses (tests/golden/<name>.json) from the current code.

    PYTHONPATH=src python tests/golden/regenerate.py          # every run in test_golden.RUNS
    PYTHONPATH=src python tests/golden/regenerate.py digits   # one

Run it only when a change is meant to move the first training losses (new init, augmentation, loss,
sampling order, default config), check that the new numbers are sane, and commit them with that reason.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "unit" / "train"))

import test_golden  # noqa: E402 - found through the path set just above
import torch  # noqa: E402 - after test_golden, as the test imports it


def main(names: list[str]) -> None:
    for name in names or sorted(test_golden.RUNS):
        with tempfile.TemporaryDirectory() as runs_dir:
            losses = test_golden.first_losses(name, Path(runs_dir))
        task, overrides = test_golden.RUNS[name]
        doc = {
            "run": name,
            "task": task,
            "overrides": overrides,
            "torch": torch.__version__,
            "losses": losses,
            "regenerate": test_golden.REGENERATE,
        }
        (HERE / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
        print(f"{name}: {', '.join(f'{v:.5f}' for v in losses)}")


if __name__ == "__main__":
    main(sys.argv[1:])
