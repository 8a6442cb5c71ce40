"""The command line: `flowc SUBCOMMAND ...` and `flowrun FILE.fcim`.

One module per subcommand (`compile`, `example`, `compare`, `analytic`, `eval`, `disasm`,
`asm`; `flowrun` is its own program). Each defines `register(subparsers, add_debug)`, which adds
its parser and sets `func` to a handler taking the parsed arguments and returning an exit code.
Thin by design: parse arguments, call the library, render results. Nothing imports cli/.
"""

import sys
from pathlib import Path

from flowc.host import keep_big_blocks, openmp_waiting

# torch's OpenMP workers spin between parallel regions by default; on a small shared machine
# that starves every other thread (measured on 2 busy cores: a SmolLM2 calibration pass went
# from 1.8 s to 50 s). How they wait must be chosen before torch loads, i.e. here: `flowrun`
# (runs of back-to-back torch ops) spins a bounded while on an idle host, the rest sleeps.
openmp_waiting(spin=Path(sys.argv[0]).stem == "flowrun")
# glibc's malloc thresholds: activation-sized blocks stay in the heap (flowc/host.py)
keep_big_blocks()
