"""Every Python block of README.md runs as written (in a fresh interpreter, in a scratch
folder), so the README cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path):
    env = {**os.environ, "OOTRAIN_NO_PROGRESS": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": str(README.parent)}
    res = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"README block {index}:\n{BLOCKS[index]}\n{res.stderr[-3000:]}"
