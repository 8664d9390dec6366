"""Thread defaults (ootrain.threads) and the plain progress log lines (ootrain.progress)."""

from __future__ import annotations

import time

import numba
import torch
from threadpoolctl import threadpool_info

from ootrain import progress as prog
from ootrain import threads as th


def _blas() -> set[int]:
    return {p["num_threads"] for p in threadpool_info()}


def test_default_threads_rule(monkeypatch):
    monkeypatch.delenv("OOTRAIN_THREADS", raising=False)
    assert 1 <= th.physical_cores() <= th.available_cpus()
    for cores, want in ((1, 1), (2, 1), (3, 2), (4, 3), (64, th.MAX_DEFAULT_THREADS)):
        monkeypatch.setattr(th, "physical_cores", lambda c=cores: c)
        assert th.default_threads() == want
    monkeypatch.setenv("OOTRAIN_THREADS", "5")
    assert th.default_threads() == 5


def test_threads_block_sets_and_restores_all_pools(monkeypatch):
    monkeypatch.setattr(th, "_process_setting", None)
    monkeypatch.delenv("OOTRAIN_THREADS", raising=False)
    before = (torch.get_num_threads(), numba.get_num_threads(), _blas())
    with th.threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1 and numba.get_num_threads() == 1
        assert _blas() == {1}
    assert (torch.get_num_threads(), numba.get_num_threads(), _blas()) == before
    with th.one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before[0]
    with th.threads(0):
        assert (torch.get_num_threads(), numba.get_num_threads(), _blas()) == before


def test_apply_threads_is_the_process_setting(monkeypatch):
    monkeypatch.setattr(th, "_process_setting", None)
    monkeypatch.delenv("OOTRAIN_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        assert th.apply_threads(1) == 1
        assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1 and _blas() == {1}
        assert th.process_setting() == 1
        th.apply_threads(0)  # leave the pools; library calls follow (no default_threads())
        torch.set_num_threads(before)
        with th.threads() as n:
            assert n == before == torch.get_num_threads()
    finally:
        th.apply_threads(before)
        monkeypatch.setattr(th, "_process_setting", None)
    monkeypatch.setenv("OOTRAIN_THREADS", "0")
    assert th.process_setting() == 0


def test_train_threads_argument(monkeypatch):
    import numpy as np
    from torch import nn

    from ootrain.engine import EngineConfig
    from ootrain.engine.core import Engine
    from ootrain.methods import RSR, train

    seen = []
    orig = Engine.train
    monkeypatch.setattr(Engine, "train", lambda self, *a, **k: (seen.append(
        torch.get_num_threads()), orig(self, *a, **k))[1])
    G = nn.Linear(2, 2)
    real = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    before = torch.get_num_threads()
    for threads in (1, 0):
        train(RSR(G, real, torch.optim.Adam(G.parameters(), 1e-2), n_directions=4), steps=1,
              config=EngineConfig(population=64, micro_batch=32, latent_dim=2), threads=threads)
        assert torch.get_num_threads() == before
    assert seen == [1, before]


def test_progress_modes(monkeypatch):
    monkeypatch.delenv("OOTRAIN_NO_PROGRESS", raising=False)
    assert prog.progress_mode(False) == "off"
    assert prog.progress_mode(True) == "log"  # pytest's stderr is not a terminal
    assert prog.progress_mode(None) == "log"
    assert isinstance(prog.make_progress(True), prog.LogProgress)
    monkeypatch.setenv("OOTRAIN_NO_PROGRESS", "1")
    assert prog.progress_mode(True) == "off"
    assert not isinstance(prog.make_progress(True), prog.LogProgress)


def test_log_progress_lines():
    lines: list[str] = []
    with prog.LogProgress(interval=0.2, write=lines.append) as p:
        t = p.add_task("[bold]engine step[/] 1/2", total=10)
        for _ in range(10):
            time.sleep(0.05)
            p.advance(t)
        quick = p.add_task("quick", total=3)  # shorter than the interval: nothing
        p.update(quick, completed=3)
        stuck = p.add_task("stuck", total=None)  # no advance: the watcher still reports it
        time.sleep(0.7)
        p.remove_task(stuck)
    assert any(line.startswith("engine step 1/2: ") and "/10 (" in line and "it/s" in line
               for line in lines), lines
    assert lines.count([ln for ln in lines if ln.startswith("engine step")][-1]) == 1
    assert [ln for ln in lines if ln.startswith("engine step")][-1].startswith(
        "engine step 1/2: 10/10")
    assert not any(line.startswith("quick") for line in lines)
    assert any(line.startswith("stuck: 0 (") for line in lines), lines


def test_make_progress_logs_to_stderr(monkeypatch, capsys):
    monkeypatch.delenv("OOTRAIN_NO_PROGRESS", raising=False)
    monkeypatch.setenv("OOTRAIN_PROGRESS_INTERVAL", "0.1")
    with prog.make_progress(True) as p:
        t = p.add_task("work", total=2)
        time.sleep(0.3)
        p.advance(t, 2)
    err = capsys.readouterr().err
    assert "work: 2/2 (" in err
    monkeypatch.setenv("OOTRAIN_NO_PROGRESS", "1")
    with prog.make_progress(True) as p:
        t = p.add_task("silent", total=2)
        time.sleep(0.3)
        p.advance(t, 2)
    assert "silent" not in capsys.readouterr().err
