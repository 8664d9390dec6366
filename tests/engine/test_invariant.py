"""The engine invariant for all four methods, with the store in memory and on disk: one
engine step's ReRun-accumulated gradient == full-batch autograd in float64."""

from __future__ import annotations

import pytest

from invariant import CASES, assert_rerun_equals_full_batch, engine_config


@pytest.fixture(params=["memory", "disk"])
def where(request, tmp_path):
    return None if request.param == "memory" else tmp_path / "store.zarr"


# OT-GAN's Sinkhorn stops at a tolerance: its reference agrees to it
TOLERANCE = {"otgan_generator": (1e-6, 1e-9), "otgan_critic": (1e-6, 1e-9)}


@pytest.mark.parametrize("case", list(CASES))
def test_rerun_equals_full_batch(where, case):
    build, step = CASES[case]
    method, reference = build()
    rtol, atol = TOLERANCE.get(case, (1e-9, 1e-11))
    assert_rerun_equals_full_batch(method, engine_config(), where, reference, step=step,
                                   rtol=rtol, atol=atol)
