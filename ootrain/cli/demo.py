"""``ootrain demo``: the main job on built-in data (the RSR paper's Figure 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ootrain.cli.options import console

__all__ = ["demo"]


def demo(out: Path = typer.Option(Path("ootrain-demo"), help="Output folder."),
         steps: Optional[int] = typer.Option(None, help="Optimisation steps (default: the "
                                             "pipeline's)."),
         progress: bool = typer.Option(True, help="Progress bars.")) -> None:
    """The main job on built-in data: RSR vs plain gradient accumulation on the RSR paper's
    Figure 1 problem (1-D mixture of 4 Gaussians, micro-batch 4, effective batch 1024)."""
    from ootrain.jobs.demo import DEFAULT_STEPS, run_fig1

    from ootrain.jobs.common import check_steps

    if steps is not None:
        check_steps("--steps", steps, 1)
    summary = run_fig1(out, steps=steps or DEFAULT_STEPS, progress=progress)
    console.print_json(json.dumps(summary))
    files = sorted(p.name for p in Path(out).iterdir() if p.is_file())
    console.print(f"wrote {out}/: {', '.join(files)} (in-memory stores)", soft_wrap=True)
