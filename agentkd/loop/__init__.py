"""The closed loop as one resumable command: collect → export → train → calibrate → distill →
report (`agentkd loop alfworld`, or `run_loop(LoopConfig(...))`).

`agentkd.loop.phases` owns the phase machinery (fingerprints, markers, skip or redo);
`agentkd.loop.alfworld` owns the ALFWorld phases, each a call into the code that does the job
(bench runs, export, training, calibration, report); `agentkd.loop.cli` the command.
"""

from agentkd.loop.alfworld import LoopConfig, run_loop
from agentkd.loop.phases import PhaseInterrupted

__all__ = ["LoopConfig", "PhaseInterrupted", "run_loop"]
