"""``kill -9`` of each training command mid-Run, mid-Solve and mid-ReRun, then the same command
again: the resumed store ends bit-identical to an uninterrupted run's.

Every run is a new process that executes a small wrapper script (written to the test's folder):
it installs the kill hook, then calls the CLI app (``ootrain.cli.app``) with the command's
arguments, so the library is untouched and the kill point is deterministic, not a matter of
timing.  The processes are forked from a ``multiprocessing`` forkserver that has only imported
torch, matplotlib and the CLI's modules (a bare interpreter spends ~4 s on them per run);
``OOTRAIN_TEST_BARE_PROCESS=1`` starts each run as ``python wrapper.py ARGS`` instead.  Hooks:

- ``{"path": P, "after": n}``: SIGKILL right after the n-th whole-chunk write of the store array
  ``P`` (``Store.write_region``, which ``write_chunk`` goes through): mid-Run for a population's
  embeddings (``steps/<k>/<population>``), mid-Solve for what the solver writes (targets,
  distances, assignments, cotangents);
- ``{"step": k, "backward": n}``: SIGKILL at the n-th ``Tensor.backward`` inside
  ``Engine.rerun`` / ``Engine.replay`` (FIT's ReRun) of step ``k``;
- ``{"store_write": n}``: SIGKILL right after the n-th write of any kind to the store (the
  local zarr store's ``set``, ``set_if_not_exists``, ``delete``, ``delete_dir``: chunks,
  manifest flags, array and group metadata, attributes, checkpoints, the lock); with
  ``"phase"`` and ``"step"`` (a case of ``METHODS``), the n-th write made in that phase of
  that step (phase ``"overlap"``: Run or Solve, for work a solver does while Run streams);
  with ``"key_contains"``, the n-th of the writes whose ``"<operation> <key>"`` contains it;
  ``{"count_writes": true}`` records how many writes a whole run makes;
- ``{"full_from": n}``: the disk is full from the n-th write on (every later ``set`` raises
  ``ENOSPC``): the run must stop with a one-line ``DiskFullError``.

The hook records the engine phase it killed in (the wrapper tracks ``Engine.run/solve/rerun/
replay``), so each case checks that it really died where it meant to.  Writes made by the
tasks of a Solve's Dask graph (RSR out of core: two sample sorts, run on Dask's local threads)
are seen too: ``Store.write_region`` is patched on the class, which every thread calls, and its
count is taken under a lock (tasks write concurrently); the zarr store's writes all run on
zarr's one event-loop thread; the phase is the main thread's (Solve waits for its tasks), so a
kill in a worker thread is recorded as one in Solve.  With concurrent tasks the n-th write of
an array may be another task's on another run: any of them resumes to the same result.

The wrapper also sets ``chunk_rows = micro_batch`` (the CLI's default chunking gives one chunk
per population at these sizes), the same for the reference, the killed and the resumed run:
every run of a case is the same command in the same environment.

Compared with the uninterrupted run of the same command in another store: the whole final
checkpoint ``checkpoints/step-<K>.pt`` (every module's parameters — the "modules" dict — and
every optimiser's state), the ``samples.npy`` the command writes, and every step's attributes in
``steps/<k>`` (metrics, results) except the wall-clock ``timings``; that no step keeps a
Solve's temporary arrays (RSR's sample sorts under ``steps/<k>/sort``); then ``ootrain store
verify``.

The runs of one method are started together, two processes at a time (the machine's cores).
Known bugs that some cases show are marked ``xfail(strict=True)`` with their cause.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch
import zarr
import zarr.storage
from typer.testing import CliRunner

from ootrain.cli import app
from ootrain.store import Store

_WRAPPER = textwrap.dedent('''
    """Run the ootrain CLI with a deterministic self-kill hook (see tests/cli/test_kill_resume.py).

    Globals given by the test: ARGV (the command's arguments), KILL (the kill spec or None),
    MARKER (file recording where it killed itself), LOG (stdout and stderr of the run)."""
    import json, os, signal, sys, threading

    if "ARGV" not in globals():   # a bare interpreter: python wrapper.py ARGS...
        ARGV, LOG = sys.argv[1:], os.environ["OOTRAIN_TEST_LOG"]
        KILL = json.loads(os.environ.get("OOTRAIN_TEST_KILL") or "null")
        MARKER = os.environ["OOTRAIN_TEST_MARKER"]
    log = os.open(LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.update(OOTRAIN_NO_PROGRESS="1", MPLBACKEND="Agg")

    import torch

    import ootrain.engine.core as core
    import ootrain.store as store_mod

    spec = KILL or {}
    marker = MARKER
    phase = {"name": None, "step": None}
    counts = {"write": 0, "backward": 0}
    write_lock = threading.Lock()   # Dask's worker threads write chunks concurrently

    def die(what):
        with open(marker, "w") as f:
            json.dump({"what": what, **phase}, f)
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def tracked(name):
        original = getattr(core.Engine, name)
        def wrapper(self, step, *args, **kwargs):
            before = dict(phase)
            phase.update(name=name, step=step)
            try:
                return original(self, step, *args, **kwargs)
            finally:
                phase.update(before)
        setattr(core.Engine, name, wrapper)

    for name in ("run", "solve", "rerun", "replay"):
        tracked(name)

    write_region = store_mod.Store.write_region
    def killing_write_region(self, path, region, value):
        write_region(self, path, region, value)
        if spec.get("path") == path:
            with write_lock:
                counts["write"] += 1
                n = counts["write"]
            if n == spec["after"]:
                die(f"write {path} #{n}")
    store_mod.Store.write_region = killing_write_region

    backward = torch.Tensor.backward
    def killing_backward(self, *args, **kwargs):
        if spec.get("backward") and phase["name"] in ("rerun", "replay") \\
                and phase["step"] == spec["step"]:
            counts["backward"] += 1
            if counts["backward"] == spec["backward"]:
                die(f"backward #{counts['backward']}")
        return backward(self, *args, **kwargs)
    torch.Tensor.backward = killing_backward

    post_init = core.EngineConfig.__post_init__
    def one_chunk_per_micro_batch(self):
        if self.chunk_rows is None:
            self.chunk_rows = self.micro_batch
        post_init(self)
    core.EngineConfig.__post_init__ = one_chunk_per_micro_batch

    import zarr.storage
    counts["store"] = 0
    # {"store_write": n, "phase": p, "step": k}: only the writes made in phase p of step k count
    # ({"key_contains": s}: and whose "<operation> <key>" contains s)
    in_phase = {"rerun": ("rerun", "replay"), "overlap": ("run", "solve")}.get(
        spec.get("phase"), (spec.get("phase"),))

    def counts_here():
        return "phase" not in spec or (phase["name"] in in_phase
                                       and phase["step"] == spec.get("step"))

    def counted(name):
        original = getattr(zarr.storage.LocalStore, name)
        async def wrapper(self, key, *args, **kwargs):
            if name.startswith("set") and counts["store"] + 1 >= spec.get("full_from", 1e18):
                import errno
                raise OSError(errno.ENOSPC, "No space left on device")
            out = await original(self, key, *args, **kwargs)
            if not counts_here() or spec.get("key_contains", "") not in f"{name} {key}":
                return out   # zarr's event-loop thread: one write at a time
            counts["store"] += 1
            if counts["store"] == spec.get("store_write"):
                die(f"store write #{counts['store']}: {name} {key}")
            return out
        setattr(zarr.storage.LocalStore, name, wrapper)

    for name in ("set", "set_if_not_exists", "delete", "delete_dir"):
        counted(name)

    from ootrain.cli import app
    code = 1
    try:
        app(ARGV, prog_name="ootrain")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        raise
    finally:
        if spec.get("count_writes"):
            with open(marker, "w") as f:
                json.dump({"writes": counts["store"]}, f)
        with open(LOG + ".exit", "w") as f:   # the exit code, should the forkserver lose it
            f.write(str(code))
''')


@dataclass
class Method:
    """One training command: its arguments (``{store}``/``{out}`` filled per run), the engine
    steps it completes, and its kill cases: name -> the hook's spec, with the ``phase`` (run,
    solve, rerun) and ``step`` it kills in (and optionally ``expect``, text the marker's
    ``what`` must contain); ``default``: the case(s) of the default suite (the others are
    slow); ``xfail``: case -> the known bug it shows."""

    args: list[str]
    steps: int
    kills: dict[str, dict[str, Any]]
    default: str | tuple[str, ...]
    writes_samples: bool = True
    xfail: dict[str, str] = field(default_factory=dict)



METHODS: dict[str, Method] = {
    # 3 steps of b=256 in 8 micro-batches; the memory budget makes Sort align in 2 passes
    "rsr": Method(
        ["rsr", "train", "--store", "{store}", "--out", "{out}", "--data", "gaussian:3",
         "--n-real", "300", "--latent-dim", "2", "-b", "256", "-m", "32", "-p", "6",
         "--steps", "3", "--memory-budget", "24000"],
        steps=3,
        kills={"run": {"phase": "run", "step": 1, "path": "steps/1/embeddings", "after": 3},
               "solve": {"phase": "solve", "step": 1, "path": "steps/1/distances", "after": 1},
               "rerun": {"phase": "rerun", "step": 1, "backward": 3}},
        default="solve"),
    # RSR's Solve out of core: 2 steps of b=8192 in 8 micro-batches (8 chunks) against 16384
    # real rows (21 chunks), 6 directions.  150 kB leaves no room for a row in memory
    # (plan_pass: 0), so each Solve is two sample sorts run by Dask on local threads: the real
    # one in 4 buckets (the MIN_BUCKET floor of 4096 values, whatever the cores share of the
    # budget), the generated one in 2.  Kills in step 1: after the 10th of 21 partition tasks
    # (a row of sort/real/records each), the 2nd of 4 bucket sorts (sort/real/sorted), the
    # first of 2 bucket maps (sort/generated/mapped), the 4th of 8 gathers (a chunk column of
    # every direction's targets), the 350th store write of the Solve (of ~700: the
    # generated sort's set-up), and the last one before the distances are written (686th:
    # the last deletion of the sorts' arrays; "expect": where the marker must say it died).
    "rsr-ooc": Method(
        ["rsr", "train", "--store", "{store}", "--out", "{out}", "--data", "gaussian:3",
         "--n-real", "16384", "--latent-dim", "2", "-b", "8192", "-m", "1024", "-p", "6",
         "--steps", "2", "--memory-budget", "150000",
         "--threads", "1"],   # Run on one torch thread leaves a core: the real sort overlaps it
        steps=2,
        # the real sample sort runs while Run streams (it may outlast Run: phase "overlap")
        kills={"solve-partition": {"phase": "overlap", "step": 1,
                                   "path": "steps/1/sort/real/records", "after": 10},
               "solve-bucket-sort": {"phase": "overlap", "step": 1,
                                     "path": "steps/1/sort/real/sorted", "after": 2},
               "solve-map": {"phase": "solve", "step": 1,
                             "path": "steps/1/sort/generated/mapped", "after": 1},
               "solve-gather": {"phase": "solve", "step": 1, "path": "steps/1/targets",
                                "after": 4},
               "solve-write": {"phase": "solve", "step": 1, "store_write": 40,
                               "key_contains": "steps/1/sort/generated/"},
               "solve-cleanup": {"phase": "solve", "step": 1, "store_write": 3,
                                 "key_contains": "delete_dir steps/1/sort/",
                                 "expect": "delete_dir steps/1/sort/"}},
        default=("solve-partition", "solve-map", "solve-cleanup")),
    # 2 rounds of OTS + FIT, b=128 in 4 micro-batches, FIT 2 epochs (8 optimiser steps)
    "semidiscrete": Method(
        ["semidiscrete", "train", "--store", "{store}", "--out", "{out}", "--data", "ring8",
         "--n-real", "64", "--latent-dim", "2", "-b", "128", "-m", "32", "--rounds", "2",
         "--fit-epochs", "2", "--cost", "sqeuclidean", "--ots-batch", "64",
         "--ots-max-iter", "10", "--alpha-stop", "100"],
        steps=2,
        kills={"run": {"phase": "run", "step": 1, "path": "steps/1/embeddings", "after": 2},
               "solve": {"phase": "solve", "step": 1, "path": "steps/1/assignments", "after": 2},
               "rerun": {"phase": "rerun", "step": 1, "backward": 3}},
        default="run"),
    # 3 iterations (generator, critic, generator: n_gen=1) of 4 x 64 in micro-batches of 32;
    # the kills land in the critic update (all four sets replayed)
    "otgan": Method(
        ["otgan", "train", "--store", "{store}", "--out", "{out}", "--data", "ring8",
         "-b", "64", "-m", "32", "--steps", "3", "--n-gen", "1", "--hidden", "16,16",
         "--critic-hidden", "16", "--feature-dim", "8", "--n-samples", "200",
         "--sinkhorn-max-iter", "100"],
        steps=3,
        kills={"run": {"phase": "run", "step": 1, "path": "steps/1/y", "after": 1},
               "solve": {"phase": "solve", "step": 1, "path": "steps/1/cotangents/x2", "after": 1},
               "rerun": {"phase": "rerun", "step": 1, "backward": 3}},
        default="rerun"),
    # the same with warm starts: each step's Solve starts from the previous one's potentials
    # (kept in the checkpoint and in steps/<k>/warm.pt), so a resume must restore them
    "otgan-warm": Method(
        ["otgan", "train", "--store", "{store}", "--out", "{out}", "--data", "ring8",
         "-b", "64", "-m", "32", "--steps", "3", "--n-gen", "1", "--hidden", "16,16",
         "--critic-hidden", "16", "--feature-dim", "8", "--n-samples", "200",
         "--sinkhorn-max-iter", "100", "--warm-start"],
        steps=3,
        kills={"solve": {"phase": "solve", "step": 1, "path": "steps/1/cotangents/x2", "after": 1},
               "rerun": {"phase": "rerun", "step": 1, "backward": 3},
               "rerun-last": {"phase": "rerun", "step": 2, "backward": 2}},
        default="rerun"),
    # 2 generator updates after 1 critic update each (4 engine steps): kills in the second
    # critic update (step 2) and the second generator update (step 3: forest, EMA and the
    # regulariser's state from the first); a critic update's Solve writes nothing
    "potgan": Method(
        ["potgan", "train", "--store", "{store}", "--out", "{out}", "--data", "ring8",
         "-b", "64", "-m", "32", "--steps", "2", "--n-critic", "1", "--vae-steps", "20",
         "--forest-trees", "2", "--forest-depth", "2", "--n-samples", "200"],
        steps=4,
        kills={"run": {"phase": "run", "step": 2, "path": "steps/2/pairs", "after": 1},
               "rerun": {"phase": "rerun", "step": 2, "backward": 1},
               "run-generator": {"phase": "run", "step": 3, "path": "steps/3/fake",
                                 "after": 1},
               "solve": {"phase": "solve", "step": 3, "path": "steps/3/cotangents/fake",
                         "after": 1},
               "rerun-generator": {"phase": "rerun", "step": 3, "backward": 2}},
        default="run"),
}


def _resized(name: str, option: str, value: int, steps: int) -> Method:
    """The command of ``METHODS[name]`` with ``option`` set to ``value``: ``steps`` steps."""
    spec = METHODS[name]
    args = list(spec.args)
    args[args.index(option) + 1] = str(value)
    return Method(args, steps, {}, "", spec.writes_samples)


_TIMEOUT = 180
runner = CliRunner()


@dataclass
class Outcome:
    store: Path
    out: Path
    seconds: float = 0.0
    marker: Optional[dict[str, Any]] = None
    killed_rc: Optional[int] = None
    resume_log: str = ""
    error: Optional[str] = None


def _argv(spec: Method, store: Path, out: Path) -> list[str]:
    return [a.format(store=store, out=out) for a in spec.args] + ["--threads", "1",
                                                                   "--no-progress"]


def _forkserver() -> Any:
    """The forkserver context, its server preloading torch (and its lazily imported dynamo,
    which ``torch.optim`` pulls in), matplotlib and the CLI's jobs: each run then starts in a
    fraction of a second instead of the ~4 s of a bare interpreter's imports."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "matplotlib.pyplot", "zarr",
                                "ootrain.cli", "ootrain.jobs.rsr", "ootrain.jobs.semidiscrete",
                                "ootrain.jobs.otgan", "ootrain.jobs.potgan"])
    return ctx


def _launch(wrapper: Path, argv: list[str], log: Path, kill: Optional[dict[str, Any]] = None,
            marker: Optional[Path] = None) -> tuple[int, str]:
    """Run the command in a new process (forked from the preloaded server; a bare interpreter
    with ``OOTRAIN_TEST_BARE_PROCESS=1``) to its end; (exit code, output)."""
    marker = marker if marker is not None else log.with_suffix(".unused")
    if os.environ.get("OOTRAIN_TEST_BARE_PROCESS") == "1":
        env = dict(os.environ, OOTRAIN_NO_PROGRESS="1", MPLBACKEND="Agg",
                   OOTRAIN_TEST_KILL=json.dumps(kill), OOTRAIN_TEST_MARKER=str(marker),
                   OOTRAIN_TEST_LOG=str(log))
        rc = subprocess.run([sys.executable, str(wrapper), *argv], env=env,
                            timeout=_TIMEOUT).returncode
    else:
        proc = _forkserver().Process(target=runpy.run_path, args=(str(wrapper),), kwargs={
            "run_name": "ootrain_kill_wrapper",
            "init_globals": {"ARGV": argv, "KILL": kill, "MARKER": str(marker),
                             "LOG": str(log)}})
        proc.start()
        proc.join(_TIMEOUT)
        if proc.is_alive():
            proc.kill()
            proc.join()
            raise TimeoutError(f"ootrain {' '.join(argv)} ran past {_TIMEOUT} s")
        rc = proc.exitcode
        exit_file = Path(str(log) + ".exit")
        if rc == 255 and exit_file.exists():
            # multiprocessing's forkserver reports 255 when the child's status did not reach
            # the parent (popen_forkserver: "should not happen usually"); seen once in ~1 100
            # runs, after a run that had completed: the code the child recorded is its own
            rc = int(exit_file.read_text())
        elif rc == 255 and kill is not None and marker.exists():
            # the same loss of status for a child its hook killed (seen once in a full suite):
            # the hook writes the marker right before its SIGKILL, and nothing else does
            rc = -signal.SIGKILL
    return rc, log.read_text() if log.exists() else ""


def _reference(wrapper: Path, name: str, root: Path) -> Outcome:
    o = Outcome(root / f"{name}-ref" / "store", root / f"{name}-ref" / "out")
    o.store.parent.mkdir(parents=True)
    t = time.perf_counter()
    rc, log = _launch(wrapper, _argv(METHODS[name], o.store, o.out), o.store.parent / "run.log")
    o.seconds = time.perf_counter() - t
    if rc != 0:
        o.error = f"the uninterrupted run failed (exit {rc}):\n{log[-3000:]}"
    return o


def _killed_and_resumed(wrapper: Path, name: str, case: str, root: Path) -> Outcome:
    spec = METHODS[name]
    o = Outcome(root / f"{name}-{case}" / "store", root / f"{name}-{case}" / "out")
    argv, folder = _argv(spec, o.store, o.out), o.store.parent
    folder.mkdir(parents=True)
    marker = folder / "killed.json"
    t = time.perf_counter()
    o.killed_rc, log = _launch(wrapper, argv, folder / "killed.log", spec.kills[case], marker)
    if o.killed_rc != -signal.SIGKILL or not marker.exists():
        o.error = f"the run was not killed by its hook (exit {o.killed_rc}):\n{log[-3000:]}"
        return o
    o.marker = json.loads(marker.read_text())
    rc, o.resume_log = _launch(wrapper, argv, folder / "resumed.log")  # the same command
    o.seconds = time.perf_counter() - t
    if rc != 0:
        o.error = f"the resumed run failed (exit {rc}):\n{o.resume_log[-3000:]}"
    return o


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory):
    """``get(method, case) -> (reference, case)``: on the first request for a method, every
    selected case of it runs (with the reference), two processes at a time."""
    root = tmp_path_factory.mktemp("kill-resume")
    wrapper = root / "ootrain_kill_wrapper.py"
    wrapper.write_text(_WRAPPER)
    done: dict[tuple[str, str], Outcome] = {}

    def get(name: str, case: str) -> tuple[Outcome, Outcome]:
        if (name, case) not in done:
            wanted = sorted({item.callspec.params["case"] for item in request.session.items
                            if getattr(item, "callspec", None) is not None
                            and item.callspec.params.get("method") == name
                            and "case" in item.callspec.params} | {case})
            with ThreadPoolExecutor(max_workers=2) as pool:
                ref = pool.submit(_reference, wrapper, name, root)
                cases = {c: pool.submit(_killed_and_resumed, wrapper, name, c, root)
                         for c in wanted}
                done[name, "ref"] = ref.result()
                for c, fut in cases.items():
                    done[name, c] = fut.result()
        return done[name, "ref"], done[name, case]

    return get


# ------------------------------------------------------------------------------ comparisons
def _checkpoint(store: Path, step: int) -> dict[str, Any]:
    raw = Store(store, mode="r").get_bytes(f"checkpoints/step-{step}.pt")
    assert raw is not None, f"{store} has no checkpoint of step {step}"
    return torch.load(io.BytesIO(raw), weights_only=True)


def _assert_identical(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape \
            and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), \
            f"{where}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for k in a:
            _assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: length differs"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def _step_attrs(store: Path, steps: int) -> list[dict[str, Any]]:
    s = Store(store, mode="r")
    rows = []
    for k in range(steps):
        attrs = dict(s.group[f"steps/{k}"].attrs)
        assert attrs.get("phase") == "done", f"{store}: step {k} is not complete"
        attrs.pop("timings", None)   # wall-clock seconds
        rows.append(attrs)
    assert not s.has(f"steps/{steps}")
    return rows


# ------------------------------------------------------------------------------ the cases
def _cases():
    for name, spec in METHODS.items():
        for case in spec.kills:
            default = (spec.default,) if isinstance(spec.default, str) else spec.default
            marks = [] if case in default else [pytest.mark.slow]
            if case in spec.xfail:
                marks.append(pytest.mark.xfail(strict=True, reason=spec.xfail[case]))
            yield pytest.param(name, case, id=f"{name}-mid-{case}", marks=marks)


_PHASE_OF = {"run": ("run",), "solve": ("solve",), "rerun": ("rerun", "replay"),
             "overlap": ("run", "solve")}


@pytest.mark.parametrize("method,case", list(_cases()))
def test_kill_resume_is_bit_identical(outcomes, method, case):
    spec, kill = METHODS[method], METHODS[method].kills[case]
    ref, cut = outcomes(method, case)
    assert ref.error is None, ref.error
    assert cut.error is None, cut.error
    # it died where it meant to, and the second run took over the dead writer's lock
    assert cut.killed_rc == -signal.SIGKILL
    assert cut.marker["name"] in _PHASE_OF[kill["phase"]] and cut.marker["step"] == kill["step"], \
        cut.marker
    assert kill.get("expect", "") in cut.marker["what"], cut.marker
    assert "taking over the lock" in cut.resume_log
    _assert_same_outcome(spec, ref, cut)


def _sort_arrays(store: Path) -> list[str]:
    """Arrays (manifests too) under a ``sort`` group: RSR's sample sorts, which a finished
    Solve deletes."""
    with warnings.catch_warnings():   # the lock key is not a zarr node
        warnings.simplefilter("ignore")
        members = zarr.open_group(zarr.storage.LocalStore(store, read_only=True),
                                  mode="r").members(max_depth=None)
        return sorted(name for name, node in members
                      if isinstance(node, zarr.Array) and "sort" in name.split("/"))


def _assert_same_outcome(spec: Method, ref: Outcome, cut: Outcome) -> None:
    """The final checkpoint (every module and optimiser), samples and step metrics of the
    resumed run equal the uninterrupted one's, and the store verifies."""
    final_ref, final_cut = _checkpoint(ref.store, spec.steps), _checkpoint(cut.store, spec.steps)
    assert final_ref["step"] == spec.steps
    _assert_identical(final_ref["modules"], final_cut["modules"], "modules")
    _assert_identical(final_ref, final_cut, "checkpoint")
    if spec.writes_samples:
        np.testing.assert_array_equal(np.load(ref.out / "samples.npy"),
                                      np.load(cut.out / "samples.npy"))
    for k, (a, b) in enumerate(zip(_step_attrs(ref.store, spec.steps),
                                   _step_attrs(cut.store, spec.steps))):
        _assert_identical(a, b, f"steps/{k} attrs")
    left = _sort_arrays(cut.store)
    assert not left, f"a Solve's sample-sort arrays remain: {left}"
    res = runner.invoke(app, ["store", "verify", str(cut.store)])
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------------------ every write
#: Write points killed per method in the default suite (seeded, spread over the run); the
#: slow suite kills after every one of them (~1100 kills, ~20 min on 2 cores;
#: ``OOTRAIN_TEST_WRITE_STRIDE=k``: every k-th).
SAMPLED_WRITES = 2
WRITE_STRIDE = int(os.environ.get("OOTRAIN_TEST_WRITE_STRIDE", "1"))
#: The runs killed at their writes: two steps where the table above has three (the first step
#: and one after it make every distinct write; a third repeats the second's).
WRITE_RUNS = {"rsr": ("--steps", 2, 2), "semidiscrete": ("--rounds", 2, 2),
              "otgan": ("--steps", 2, 2), "potgan": ("--steps", 2, 4)}


def _count_writes(wrapper: Path, spec: Method, name: str, root: Path) -> tuple[Outcome, int]:
    """The uninterrupted reference run, counting its store writes."""
    o = Outcome(root / f"{name}-wref" / "store", root / f"{name}-wref" / "out")
    o.store.parent.mkdir(parents=True)
    marker = o.store.parent / "writes.json"
    rc, log = _launch(wrapper, _argv(spec, o.store, o.out), o.store.parent / "run.log",
                      {"count_writes": True}, marker)
    assert rc == 0, f"the uninterrupted run failed (exit {rc}):\n{log[-3000:]}"
    return o, json.loads(marker.read_text())["writes"]


def _kill_at_write(wrapper: Path, spec: Method, name: str, k: int, root: Path
                   ) -> tuple[str, Outcome]:
    """Kill after store write ``k``, resume: ``("identical" | "refused" | "failed", outcome)``
    (refused: the resumed run exits 1 with one line that names a way to recover)."""
    o = Outcome(root / f"{name}-w{k}" / "store", root / f"{name}-w{k}" / "out")
    argv, folder = _argv(spec, o.store, o.out), o.store.parent
    folder.mkdir(parents=True)
    marker = folder / "killed.json"
    o.killed_rc, log = _launch(wrapper, argv, folder / "killed.log", {"store_write": k}, marker)
    if o.killed_rc != -signal.SIGKILL or not marker.exists():
        o.error = f"write {k}: not killed by its hook (exit {o.killed_rc}):\n{log[-2000:]}"
        return "failed", o
    o.marker = json.loads(marker.read_text())
    rc, o.resume_log = _launch(wrapper, argv, folder / "resumed.log")
    lines = [ln for ln in o.resume_log.splitlines() if ln.strip()]
    if rc == 1 and "Traceback" not in o.resume_log and lines and \
            any(w in lines[-1] for w in ("rerun", "repair", "resume", "unlock")):
        return "refused", o
    if rc != 0:
        o.error = f"{o.marker['what']}: the resumed run failed (exit {rc}):\n{o.resume_log[-2000:]}"
        return "failed", o
    return "identical", o


def _write_points(method: str, tmp_path: Path, every: bool, first: int, stride: int,
                  sampled: int, seed: int) -> tuple[Path, Method, Outcome, int, list[int]]:
    """The wrapper, the 2-step command of ``method``, its uninterrupted reference run, its
    number of store writes and the write points to try: every ``stride``-th from ``first``,
    or ``sampled`` seeded ones."""
    wrapper = tmp_path / "ootrain_kill_wrapper.py"
    wrapper.write_text(_WRAPPER)
    spec = _resized(method, *WRITE_RUNS[method])
    ref, total = _count_writes(wrapper, spec, method, tmp_path)
    points = list(range(first, total + 1, stride)) if every else sorted(
        {int(k) for k in np.random.default_rng(seed).integers(first, total + 1, sampled)})
    return wrapper, spec, ref, total, points


def _write_case(method: str, every: bool, tmp_path: Path) -> None:
    wrapper, spec, ref, total, points = _write_points(method, tmp_path, every, 1, WRITE_STRIDE,
                                                      SAMPLED_WRITES, len(method))
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda k: _kill_at_write(wrapper, spec, method, k, tmp_path),
                                points))
    tally = {"identical": 0, "refused": 0, "failed": 0}
    for (kind, o), k in zip(results, points):
        tally[kind] += 1
        assert kind != "failed", o.error
        if kind == "identical":
            try:
                _assert_same_outcome(spec, ref, o)
            except AssertionError as e:
                raise AssertionError(f"killed after {o.marker['what']}: {e}") from None
    print(f"\nkill after a store write: {method}: {total} write points, {len(points)} killed, "
          f"{tally['identical']} resumed bit-identically, {tally['refused']} refused with a "
          "clear error, 0 lost")


@pytest.mark.parametrize("method", list(WRITE_RUNS))
def test_kill_after_sampled_store_writes_resumes_identically(method, tmp_path):
    _write_case(method, False, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(3000)
@pytest.mark.parametrize("method", list(WRITE_RUNS))
def test_kill_after_every_store_write_resumes_identically(method, tmp_path):
    _write_case(method, True, tmp_path)


def test_corrupt_chunk_after_a_kill_is_refused_then_repaired(tmp_path):
    """The refusal path: killed mid-Run, then a flagged chunk of that Run is damaged on disk.
    The resumed run refuses in one line naming the array, the chunk and ``ootrain store
    repair``; after the repair the same command resumes to the uninterrupted result."""
    wrapper = tmp_path / "ootrain_kill_wrapper.py"
    wrapper.write_text(_WRAPPER)
    spec = METHODS["rsr"]
    ref = _reference(wrapper, "rsr", tmp_path)
    assert ref.error is None, ref.error
    o = Outcome(tmp_path / "cut" / "store", tmp_path / "cut" / "out")
    o.store.parent.mkdir(parents=True)
    argv = _argv(spec, o.store, o.out)
    rc, log = _launch(wrapper, argv, o.store.parent / "killed.log", spec.kills["run"],
                      o.store.parent / "killed.json")
    assert rc == -signal.SIGKILL, log[-2000:]
    chunk = o.store / "steps" / "1" / "embeddings" / "c" / "1" / "0"
    assert Store(o.store, mode="r").done("steps/1/embeddings")[1]
    chunk.write_bytes(chunk.read_bytes()[:-8] + b"\x00" * 8)
    rc, log = _launch(wrapper, argv, o.store.parent / "refused.log")
    last = [ln for ln in log.splitlines() if ln.strip()][-1]
    assert rc == 1 and "Traceback" not in log, log[-2000:]
    assert last.startswith("error: ") and "'steps/1/embeddings' chunk [1, 0] is corrupt" in last \
        and "ootrain store repair" in last, last
    res = runner.invoke(app, ["store", "repair", str(o.store)])
    assert res.exit_code == 0 and "steps/1/embeddings: 1 damaged chunks" in res.output, res.output
    rc, o.resume_log = _launch(wrapper, argv, o.store.parent / "resumed.log")
    assert rc == 0, o.resume_log[-2000:]
    _assert_same_outcome(spec, ref, o)


# ------------------------------------------------------------------------------ random times
#: Longer runs of each command for the random-time kills: the option that sets the number of
#: steps, its value, and the engine steps that makes.
LONG_RUNS = {"rsr": ("--steps", 12, 12), "semidiscrete": ("--rounds", 6, 6),
             "otgan": ("--steps", 16, 16), "potgan": ("--steps", 8, 16)}
RANDOM_KILLS = int(os.environ.get("OOTRAIN_TEST_RANDOM_KILLS", "50"))


def _launch_killed_after(wrapper: Path, argv: list[str], log: Path, delay: float) -> bool:
    """Start the command and SIGKILL it ``delay`` seconds later (no hook: wherever it is);
    True when the kill landed, False when the run had already ended (then it must have
    succeeded)."""
    proc = _forkserver().Process(target=runpy.run_path, args=(str(wrapper),), kwargs={
        "run_name": "ootrain_kill_wrapper",
        "init_globals": {"ARGV": argv, "KILL": None, "MARKER": str(log.with_suffix(".unused")),
                         "LOG": str(log)}})
    proc.start()
    proc.join(delay)
    if proc.is_alive():
        proc.kill()       # tolerates the run ending (and being reaped) between the two calls
        proc.join()
        if proc.exitcode == -signal.SIGKILL:
            return True
    assert proc.exitcode == 0, log.read_text()[-2000:]
    return False


def _completed(store: Path, steps: int) -> int:
    if not (store / "zarr.json").exists():
        return 0
    s = Store(store, mode="r")
    return sum(1 for k in range(steps) if s.has(f"steps/{k}")
               and s.group[f"steps/{k}"].attrs.get("phase") == "done")


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("method", list(LONG_RUNS))
def test_kill_at_random_times_of_a_long_run(method, tmp_path):
    """``kill -9`` at ``RANDOM_KILLS`` random moments of a long run, each a random time after
    the start of the command that resumes the previous one (wherever it is: imports, the
    lock, Run, Solve, ReRun, a checkpoint, pruning), then the same command to its end:
    bit-identical to the uninterrupted run, and the store verifies.  The times are drawn so
    the kills spread over the whole run (half to all of an offset — a command's start-up
    cost, grown while kills make no step progress —, then up to twice the run's remaining
    time over the kills left); a run that still ends before all its kills is compared and a
    new one started."""
    wrapper = tmp_path / "ootrain_kill_wrapper.py"
    wrapper.write_text(_WRAPPER)
    spec = _resized(method, *LONG_RUNS[method])
    ref = Outcome(tmp_path / "ref" / "store", tmp_path / "ref" / "out")
    ref.store.parent.mkdir(parents=True)
    t = time.perf_counter()
    rc, log = _launch(wrapper, _argv(spec, ref.store, ref.out), ref.store.parent / "run.log")
    seconds = time.perf_counter() - t
    assert rc == 0, log[-3000:]
    t = time.perf_counter()           # a command's fixed cost: the same one on the finished
    rc, log = _launch(wrapper, _argv(spec, ref.store, ref.out), ref.store.parent / "again.log")
    start = time.perf_counter() - t   # store (start-up, lock, checks, nothing to do)
    assert rc == 0, log[-3000:]
    rng = np.random.default_rng(list(map(ord, method)))
    landed, runs, at_step = 0, 0, []
    while landed < RANDOM_KILLS:
        runs += 1
        o = Outcome(tmp_path / f"cut{runs}" / "store", tmp_path / f"cut{runs}" / "out")
        o.store.parent.mkdir(parents=True)
        argv, attempt, offset, last = _argv(spec, o.store, o.out), 0, start, -1
        while landed < RANDOM_KILLS:
            attempt += 1
            completed = _completed(o.store, spec.steps)
            if completed == spec.steps:
                break                                   # only the output is left to write
            # a resume costs more than the no-op start (checkpoint, JIT, the step's set-up):
            # while kills make no step progress, wait longer before the random part
            offset = offset * 1.25 if completed == last else max(start, offset / 1.25)
            last = completed
            left = max(seconds - start, 0.5) * (1 - completed / spec.steps)
            delay = offset * float(rng.uniform(0.5, 1.0)) + float(
                rng.uniform(0.0, min(left, 2 * left / (RANDOM_KILLS - landed))))
            if not _launch_killed_after(wrapper, argv, o.store.parent / f"kill-{attempt}.log",
                                        delay):
                break                                   # it ended before its kill
            landed += 1
            at_step.append(_completed(o.store, spec.steps))
        rc, o.resume_log = _launch(wrapper, argv, o.store.parent / "resumed.log")
        assert rc == 0, o.resume_log[-3000:]
        _assert_same_outcome(spec, ref, o)
    print(f"\nkill at random times: {method}: runs of {spec.steps} steps ({seconds:.1f} s "
          f"uninterrupted, {start:.1f} s start-up), {landed} kills in {runs} run(s) (completed steps at the kills: "
          f"{np.bincount(at_step, minlength=spec.steps + 1).tolist()}), every run resumed "
          "bit-identically, 0 lost")


# ------------------------------------------------------------------------------ a full disk
FULL_POINTS = 1          # seeded write points per method in the default suite; slow: every 10th


def _full_disk_case(method: str, every: bool, tmp_path: Path) -> None:
    """The disk fills up at a write (every later write fails with ENOSPC): the command stops
    with one line naming the full disk and the remedy; once space is free again the same
    command resumes to the uninterrupted result."""
    wrapper, spec, ref, total, points = _write_points(method, tmp_path, every, 2, 10,
                                                      FULL_POINTS, 7 * len(method))

    def one(k: int) -> Outcome:
        o = Outcome(tmp_path / f"full{k}" / "store", tmp_path / f"full{k}" / "out")
        argv, folder = _argv(spec, o.store, o.out), o.store.parent
        folder.mkdir(parents=True)
        rc, log = _launch(wrapper, argv, folder / "full.log", {"full_from": k})
        o.killed_rc = rc
        if rc == 0:   # only deletions (pruning) were left: nothing needed space
            return o
        lines = [ln for ln in log.splitlines() if ln.strip() and not ln.startswith("warning")]
        if rc != 1 or "Traceback" in log or not lines[-1].startswith("error: disk full") or \
                "free space and rerun the same command" not in lines[-1]:
            o.error = f"disk full from write {k}: exit {rc}:\n{log[-2000:]}"
            return o
        rc, o.resume_log = _launch(wrapper, argv, folder / "resumed.log")
        if rc != 0:
            o.error = f"disk full from write {k}, resumed: exit {rc}:\n{o.resume_log[-2000:]}"
        return o

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(one, points))
    for k, o in zip(points, outcomes):
        assert o.error is None, o.error
        try:
            _assert_same_outcome(spec, ref, o)
        except AssertionError as e:
            raise AssertionError(f"disk full from write {k}: {e}") from None
    stopped = sum(o.killed_rc == 1 for o in outcomes)
    print(f"\ndisk full: {method}: from {len(points)} of {total} write points: {stopped} stopped "
          "with one DiskFullError line and resumed bit-identically once freed, "
          f"{len(points) - stopped} finished (only deletions left), bit-identical")


@pytest.mark.parametrize("method", list(WRITE_RUNS))
def test_full_disk_stops_cleanly_and_resumes_once_freed(method, tmp_path):
    _full_disk_case(method, False, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("method", list(WRITE_RUNS))
def test_full_disk_at_every_tenth_write(method, tmp_path):
    _full_disk_case(method, True, tmp_path)
