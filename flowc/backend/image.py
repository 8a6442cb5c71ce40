"""The program image: a Program plus the named tensors and facts the runtime needs.

An Image is what `flowc compile` produces and what the `.fcim` container stores; the runtime
executes it. It is plain data: numpy arrays and JSON-able dictionaries.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    k_pad: int = 0  # zero columns appended to K so every N:M group is whole ((-K) mod M)
    padded_in: int = 0  # K the macro passes cover (k_tiles * K_pass): zero columns fill rows

    def to_dict(self) -> dict:
        d = {"name": self.name, "kind": self.kind}
        if self.kind == "gemm":
            d.update(pattern=list(self.pattern), native=list(self.native),
                     in_features=self.in_features, out_features=self.out_features,
                     nonzeros=self.nonzeros, k_pad=self.k_pad, padded_in=self.padded_in)
        elif self.kind == "attention":  # mm.act: K and N of one head's GEMM
            d.update(in_features=self.in_features, out_features=self.out_features)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LayerInfo:
        def tup(v):
            return (tuple(v) if v is not None else None)
        return cls(d["name"], d["kind"], tup(d.get("pattern")), tup(d.get("native")),
                   d.get("in_features", 0), d.get("out_features", 0), d.get("nonzeros", 0),
                   d.get("k_pad", 0), d.get("padded_in", 0))


@dataclass(frozen=True, eq=False)
class PricedCosts:
    """Per-layer costs of a program's run, priced once (flowc.runtime.priced) and stored in the
    .fcim: `entries` maps a price key (pricing format, cost-model code digest, numerics,
    machine hash) to the report rows of every layer.

    Valid only for the very program, tensors, signature and layer table they were priced for
    (checked by identity): an Image rebuilt with another program (dataclasses.replace) does
    not carry them over to the file or the run, and a machine not in the key prices afresh.
    """

    program: Program
    tensors: Mapping[str, np.ndarray]
    inputs: tuple
    layers: tuple
    entries: Mapping[str, tuple[dict, ...]]
    # (a copy of the machine dict, its hash) as the reader found them: a run on an equal
    # dict skips re-hashing it (json of the machine: ~70 us, a small model's whole budget)
    machine_hash: tuple[dict, str] | None = None

    def valid_for(self, image: Image) -> bool:
        return (self.program is image.program and self.tensors is image.tensors
                and self.layers is image.layers and self.inputs == image.inputs)


@dataclass
class Image:
    program: Program
    tensors: dict[str, np.ndarray]
    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]
    layers: tuple[LayerInfo, ...]
    machine: dict  # MachineConfig.to_dict() of the target
    compile_info: dict = field(default_factory=dict)
    reference_onnx: bytes | None = None  # pruned fp32 model, for the ORT check (large
    # initialisers may be recipes over `tensors`: flowc.backend.reference.materialise)
    samples: tuple[np.ndarray, ...] = ()  # sample inputs the reference was checked on
    # packed weights: name -> {"n", "m", "out", "in"} (pattern and true shape; the container
    # stores only the real kept slots and bit-packs the metadata from it)
    packed: dict[str, dict] = field(default_factory=dict)
    vocab: tuple[str, ...] = ()  # decoded text of each token id (language models), for reports
    priced: PricedCosts | None = None  # costs priced at compile time (flowc.runtime.priced)

    def reference_model(self) -> bytes:
        """Self-contained ONNX bytes of the reference (recipes rebuilt from the tensors);
        use this, not `reference_onnx`, to run the reference (flowc.backend.reference)."""
        from flowc.backend.reference import materialise

        return materialise(self)

    def weight_bytes(self) -> float:
        """int8 kept weights + metadata bits (log2(M) per kept weight when sparse), in bytes:
        the floor a weight payload can reach. Each packed tensor counts once (tied tables)."""
        total = 0.0
        for info in self.packed.values():
            n, m = info["n"], info["m"]
            kept = info["out"] * -(-info["in"] // m) * n if n < m else info["out"] * info["in"]
            total += kept * (1 + (((m - 1).bit_length() / 8) if n < m else 0))
        return total
