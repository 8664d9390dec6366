"""Jobs: what each ``ootrain`` command does, as library functions.

Each takes the command's options as plain values (spec strings, numbers, paths), loads the
inputs, trains or solves, writes the outputs and returns a summary; bad input raises
:class:`InputError` before any work.  The CLI (:mod:`ootrain.cli`) only parses options, calls
one job and prints its result.  ``demo`` is the main job on built-in data (the RSR paper's
Figure 1).
"""

from ootrain.jobs.common import InputError, input_errors, default_rows
from ootrain.jobs.demo import run_fig1
from ootrain.jobs.otgan import OTGANJob, otgan_train
from ootrain.jobs.potgan import POTGANJob, potgan_train
from ootrain.jobs.rsr import RSRJob, rsr_train
from ootrain.jobs.semidiscrete import (SolveJob, GradualJob, make_ot, solve_semidiscrete,
                                       train_semidiscrete)
from ootrain.jobs.store import (ArrayInfo, StoreInfo, store_info, verify_store, unlock_store)

__all__ = ["InputError", "input_errors", "default_rows", "run_fig1", "OTGANJob", "otgan_train",
           "POTGANJob", "potgan_train", "RSRJob", "rsr_train", "SolveJob", "GradualJob",
           "make_ot", "solve_semidiscrete", "train_semidiscrete", "ArrayInfo", "StoreInfo",
           "store_info", "verify_store", "unlock_store"]
