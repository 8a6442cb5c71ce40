"""The program image: a Program plus the named tensors and facts the runtime needs.

An Image is what `flowc compile` produces and what the `.fcim` container stores; the runtime
executes it. It is plain data: numpy arrays and JSON-able dictionaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flowc.isa import Program


@dataclass(frozen=True)
class IOSpec:
    """One model input or output: its report name, the buffer that holds it, shape and dtype."""

    name: str
    buffer: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "buffer": self.buffer, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> IOSpec:
        return cls(d["name"], d["buffer"], tuple(int(x) for x in d["shape"]), d["dtype"])


@dataclass(frozen=True)
class LayerInfo:
    """Static facts about one report section, known at compile time."""

    name: str
    kind: str  # gemm | attention | vector
    pattern: tuple[int, int] | None = None  # N:M asked for (kept, group)
    native: tuple[int, int] | None = None  # N:M the machine runs it as
    in_features: int = 0
    out_features: int = 0
    nonzeros: int = 0  # kept weights

    def to_dict(self) -> dict:
        d = {"name": self.name, "kind": self.kind}
        if self.kind == "gemm":
            d.update(pattern=list(self.pattern), native=list(self.native),
                     in_features=self.in_features, out_features=self.out_features,
                     nonzeros=self.nonzeros)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LayerInfo:
        def tup(v):
            return (tuple(v) if v is not None else None)
        return cls(d["name"], d["kind"], tup(d.get("pattern")), tup(d.get("native")),
                   d.get("in_features", 0), d.get("out_features", 0), d.get("nonzeros", 0))


@dataclass
class Image:
    program: Program
    tensors: dict[str, np.ndarray]
    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]
    layers: tuple[LayerInfo, ...]
    machine: dict  # MachineConfig.to_dict() of the target
    compile_info: dict = field(default_factory=dict)
    reference_onnx: bytes | None = None  # pruned fp32 model, for the ORT check
    samples: tuple[np.ndarray, ...] = ()  # sample inputs the reference was checked on

    def layer(self, name: str) -> LayerInfo:
        for info in self.layers:
            if info.name == name:
                return info
        raise KeyError(name)

    def payload_bytes(self) -> dict[str, int]:
        """Bytes per tensor family: what the machine needs vs what only the checks need."""
        sizes = {"machine": 0, "check": 0}
        for name, arr in self.tensors.items():
            key = "check" if name.endswith(".fvalues") else "machine"
            sizes[key] += arr.nbytes
        sizes["check"] += len(self.reference_onnx or b"")
        return sizes
