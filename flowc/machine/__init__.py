"""The hardware model: one typed, validated machine description (SPEC.md section 3).

    from flowc.machine import load_machine
    m = load_machine("flexcim")
    m.k_pass(1, 8)          # 1024 input channels per macro pass
    m.fit_pattern(2, 8)     # (2, 4) on a machine without 2:8
    m.energy_pj({"mult_bit": 64})
"""

from flowc.machine.config import (
    PAIR_SELECTS,
    RESIDENCIES,
    MachineConfig,
    MacroConfig,
    VectorConfig,
    check_pattern,
    fits,
)
from flowc.machine.energy import ACTIONS, ActionSpec, EnergyEntry, EnergyTable
from flowc.machine.errors import EnergyError, MachineConfigError, PatternError
from flowc.machine.load import builtin_machines, load_machine

__all__ = [
    "ACTIONS",
    "PAIR_SELECTS",
    "RESIDENCIES",
    "ActionSpec",
    "EnergyEntry",
    "EnergyError",
    "EnergyTable",
    "MachineConfig",
    "MachineConfigError",
    "MacroConfig",
    "PatternError",
    "VectorConfig",
    "builtin_machines",
    "check_pattern",
    "fits",
    "load_machine",
]
