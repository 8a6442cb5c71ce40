"""Per-layer costs priced once: per layer signature, per (program, machine), and at compile time.

A run's events are a function of the program, the input signature (every shape is fixed by
it) and the weights' metadata, so the cycles and energy of every layer are the same on every
run on one machine. Three levels of reuse, each exact (tests compare field by field):
- FastCostListener prices each distinct layer signature once (SmolLM2's 30 blocks: one);
- `priced_layers` prices a plan's recorded events once per machine and keeps them on the plan;
- `price_image` prices at compile time and stores the rows in the .fcim (priced.json,
  flowc.backend.priced_doc) under a key of everything the prices depend on beyond the file:
  the pricing format, a digest of the code that makes events and prices them, the numerics
  and the machine's hash. A `flowrun` call whose key matches only reads them
  (`stored_layers`); another machine, numerics or flowc code prices afresh.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import operator
import os
from dataclasses import replace
from typing import NamedTuple

from flowc.backend.image import Image, PricedCosts
from flowc.backend.priced_doc import PRICED_FORMAT, machine_hash
from flowc.runtime import fused_attention, fused_linear  # noqa: F401  (loaded before the digest)
from flowc.runtime.cost import mnemonic
from flowc.runtime.events import LoopEvent
from flowc.runtime.interpreter import Interpreter, gc_paused
from flowc.runtime.report import CostListener, LayerCost, loop_weight

# The code a stored price depends on (paths under the flowc package): what builds the events
# (handlers, plan, fused steps), what prices them, the machine model and the instruction set.
PRICED_SOURCES = (
    "runtime/cost.py", "runtime/report.py", "runtime/events.py", "runtime/priced.py",
    "runtime/interpreter.py", "runtime/plan.py", "runtime/vector.py", "runtime/vector_masks.py",
    "runtime/fused.py", "runtime/fused_linear.py", "runtime/fused_attention.py",
    "machine/config.py", "machine/energy.py", "isa/flexcim.isa", "isa/instructions.py", "isa/definition.py",
)
# `flowc compile --price auto` prices programs of at most this many operations (the verifier's
# work estimate of one run), those whose run takes up to about a second on a 2-core host:
# there pricing is a share of every flowrun call worth moving into the compile (the
# 784-512-256-10 MLP at batch 8, 5.3e6: ~0.8 ms of pricing beside a ~1 ms run; SmolLM2-135M
# at 128 tokens, 2.3e10: 15-17 ms of events and pricing beside a ~440 ms run, 3.5 %), and the
# compile pays one run (plan preparation and one run: seconds). Far above it a run takes
# many seconds, pricing is ~1 % of it, and the compile would pay that long run.
AUTO_PRICE_WORK = 2**35
ROW_FIELDS = ("name", "kind", "cycles", "actions", "macs", "kept_macs", "tokens", "energy_pj",
              "setup_cycles", "setup_actions", "setup_energy_pj")


def cost_model_for(image: Image):
    from flowc.machine import MachineConfig
    from flowc.runtime.cost import CostModel

    machine = MachineConfig.from_dict(image.machine)
    return machine, CostModel(machine)


@functools.cache
def code_digest() -> str:
    """SHA-256 of the sources in PRICED_SOURCES: any edit to how events are built or priced
    changes every price key, so stale prices are never read.

    Reading and hashing the sources takes ~0.7 ms, half a small model's run, so the digest is
    kept in the flowc cache folder ($FLOWC_CACHE_DIR, docs/cli.md) under the files'
    path, size, mtime and inode, the stamp Python itself trusts to reuse a module's bytecode;
    checking it costs a stat per file and one small read (0.1-0.3 ms in a fresh process on
    this project's 2-core host). FLOWC_CACHE_DIR=off: the sources are hashed every process.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # os.path, not
    paths = [os.path.join(root, rel) for rel in PRICED_SOURCES]  # Path: ~0.2 ms less here
    stamp = ";".join(f"{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
                     for path, st in zip(paths, map(os.stat, paths), strict=True))
    cache = _digest_cache()
    if cache is not None:
        try:
            with open(cache, "rb") as f:
                doc = json.loads(f.read())
            if doc["stamp"] == stamp and isinstance(doc["digest"], str):
                return doc["digest"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent, unreadable or another stamp: hash the sources
    h = hashlib.sha256()
    for rel, path in zip(PRICED_SOURCES, paths, strict=True):
        with open(path, "rb") as f:
            data = f.read()
        h.update(f"{rel} {len(data)}\n".encode())
        h.update(data)
    digest = h.hexdigest()
    if cache is not None:
        try:
            from flowc.backend.container import write_atomic

            os.makedirs(os.path.dirname(cache), exist_ok=True)
            write_atomic(cache, json.dumps({"stamp": stamp, "digest": digest}).encode())
        except OSError:
            pass  # a read-only cache folder costs speed, never correctness
    return digest


def _digest_cache() -> str | None:
    """The digest's cache file (None: caching is off); one entry, for the last flowc
    installation that used it (another one's sources have other paths in the stamp)."""
    env = os.environ.get("FLOWC_CACHE_DIR")  # the folder model_cache.cache_root names (not
    if env == "off":  # imported from there: that module loads the model stack, ~ms)
        return None
    base = env or os.path.join(os.environ.get("XDG_CACHE_HOME")
                               or os.path.join(os.path.expanduser("~"), ".cache"), "flowc")
    return os.path.join(base, "priced-code.json")  # the stamp holds the sources' full paths


def price_key(machine: dict, numerics: str, known: tuple[dict, str] | None = None) -> str:
    """The key of prices on `machine` with `numerics` under this flowc's code. `known`: a
    (copy of a machine dict, its hash) pair already computed (the reader's), used when it
    equals `machine`. The last key is kept with a copy of its machine, so fresh interpreters
    on one image compare the machine (~5 us) instead of hashing it (~70 us); comparing
    contents, not identity, keeps a machine edited in place from reusing a stale key."""
    code = code_digest()
    for m_copy, num, c, key in _LAST_KEY:
        if num == numerics and c == code and m_copy == machine:
            return key
    mhash = known[1] if known is not None and known[0] == machine else machine_hash(machine)
    text = f"priced {PRICED_FORMAT}|code {code}|numerics {numerics}|machine {mhash}"
    key = hashlib.sha256(text.encode()).hexdigest()
    _LAST_KEY[:] = [(copy.deepcopy(machine), numerics, code, key)]
    return key


_LAST_KEY: list[tuple[dict, str, str, str]] = []  # (machine copy, numerics, code, key)


def layer_rows(layers: list[LayerCost]) -> tuple[dict, ...]:
    """LayerCosts as JSON-able rows (ints stay ints, floats round-trip exactly)."""
    return tuple({f: getattr(lc, f) for f in ROW_FIELDS} for lc in layers)


def rows_to_layers(rows) -> list[LayerCost]:
    """Fresh LayerCost objects from rows (callers may edit them). Positional: ROW_FIELDS is
    LayerCost's field order (a test checks), and keywords cost a run's budget here."""
    out = []
    for r in rows:
        n, k, c, a, m, km, t, e, sc, sa, se = _ROW_VALUES(r)
        out.append(LayerCost(n, k, c, dict(a), m, km, t, e, sc, dict(sa), se))
    return out


_ROW_VALUES = operator.itemgetter(*ROW_FIELDS)


def price_image(image: Image, numerics: str = "int8") -> float:
    """Run `image` once on its sample inputs (after the program verifier), price its events on
    its machine and keep the rows in `image.priced` (written to the .fcim by the container).
    Returns the seconds it took. Entries for other keys already valid for `image` are kept."""
    import time

    from flowc.runtime.verifier import verify

    if not image.samples:
        raise ValueError("price_image: the image has no sample inputs to run")
    t0 = time.perf_counter()
    verify(image)
    interp = Interpreter(image, numerics=numerics)
    interp.plan().record = True
    interp.run(list(image.samples))
    layers = priced_layers(interp, cost_model_for(image)[1])
    old = image.priced
    entries = dict(old.entries) if old is not None and old.valid_for(image) else {}
    entries[price_key(image.machine, numerics)] = layer_rows(layers)
    image.priced = PricedCosts(image.program, image.tensors, image.inputs, image.layers, entries)
    return time.perf_counter() - t0


def stored_layers(image: Image, numerics: str, key: str | None = None) -> list[LayerCost] | None:
    """The compile-time prices of `image` for its machine and `numerics`, or None (priced
    for another machine, numerics or code, or none stored)."""
    priced = image.priced
    if priced is None or not priced.valid_for(image):
        return None
    rows = priced.entries.get(key or price_key(image.machine, numerics, priced.machine_hash))
    return None if rows is None else rows_to_layers(rows)


class MemoCostModel:
    """A CostModel whose per-event costs are memoised by the event's sizes.

    Transformer blocks repeat: 30 identical blocks in SmolLM2 ask for the same costs 30 times.
    The cost of an instruction depends on its mnemonic and the event's counts only (never on
    buffer names), so the key is (class, sizes); a loop's key adds its weight name when exact
    per-tile pair passes are in play. Everything else is delegated to the wrapped model.
    """

    def __init__(self, model, memo: dict | None = None) -> None:
        self.model = model
        self.machine = model.machine  # read per loop by the listener: no __getattr__ detour
        self.memo = {} if memo is None else memo
        self.sums: dict[tuple, tuple] = {}  # FastCostListener: per-layer-signature prices

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def actions_pj(self, actions: dict[str, float]) -> float:
        """machine.energy_pj(actions), bit for bit (the same products summed in the same
        sorted order), without re-checking every action name on every call; an action the
        machine does not price goes to machine.energy_pj, which raises its precise error."""
        table = self.__dict__.get("_pj")
        if table is None:
            table = self._pj = {e.action: e.per_count_pj for e in self.machine.energy.entries}
        total = 0
        for name in sorted(actions):
            count = actions[name]
            if name not in table:
                return float(self.machine.energy_pj(actions))
            if count:
                total += count * table[name]
        return float(total)

    @staticmethod
    def _key(ev) -> tuple:
        return (type(ev.instr), ev.tiles, ev.tokens, ev.keep_n, ev.group_m, ev.k_pass,
                ev.elements, ev.in_elements)

    def instr_cost(self, ev):
        key = self._key(ev)
        cost = self.memo.get(key)
        if cost is None:
            cost = self.memo[key] = self.model.instr_cost(ev)
        return cost

    def loop_cost(self, ev, pair_passes=None):
        weight = next((getattr(b.instr, "w", None) for b in ev.body
                       if getattr(b.instr, "w", None)), None) if pair_passes is not None else None
        # body events share their sizes (one loop, one macro): the first one and the
        # instruction types identify the loop's cost
        key = ("loop", ev.n_tiles, ev.k_tiles, weight, self._key(ev.body[0]) if ev.body else (),
               tuple(type(b.instr) for b in ev.body))
        cost = self.memo.get(key)
        if cost is None:
            cost = self.memo[key] = self.model.loop_cost(ev, pair_passes)
        return cost


class FastCostListener(CostListener):
    """CostListener that defers all pricing to finish(); same report (a test checks).

    During the run it only records events (a list append), so accounting adds little to
    execution. finish() prices each layer once per distinct *signature*: the sizes of its
    events in order, whether each loop's weight is loaded for the first time (setup), and the
    weight name only where per-tile pair passes make the cost depend on it. SmolLM2's 30
    identical blocks share their signatures, so 29 of 30 layers are a dict lookup. The prices
    live in the MemoCostModel, so a listener built on the same memo reuses them across runs.
    MACs and token counts are per layer (they depend on the layer's weights) and are counted
    for every layer.
    """

    def __init__(self, cost_model, layers, tensors=None) -> None:
        if not isinstance(cost_model, MemoCostModel):
            cost_model = MemoCostModel(cost_model)
        super().__init__(cost_model, layers, tensors)
        self._trace: list = []
        self.on_instr = self.on_loop = self._trace.append  # type: ignore[method-assign]

    def finish(self) -> list:
        with gc_paused():  # thousands of small allocations, no cycles (see gc_paused)
            return self._finish()

    def _finish(self) -> list:
        grouped: dict[str, tuple[list, list]] = {}
        exact = self.tensors is not None and self.model.machine.pair_select == "row-shared"
        loaded = self.loaded
        names: dict[type, str] = {}  # instruction class -> mnemonic (see _name)
        layer, sigs, items = None, [], []  # consecutive events mostly share their layer
        for ev in self._trace:
            if ev.layer != layer:
                layer = ev.layer
                entry = grouped.get(layer)
                if entry is None:
                    self._layer(layer)  # layers keep the order of their first event
                    entry = grouped[layer] = ([], [])
                sigs, items = entry
            if type(ev) is LoopEvent:
                body = ev.body
                weight = loop_weight(ev)
                fresh = weight is None or weight not in loaded
                if weight is not None:
                    loaded.add(weight)
                # a loop's body events share their sizes (Interpreter.loop_event): the body's
                # mnemonics and the first event's sizes are the whole body's signature
                sigs.append(("loop", ev.n_tiles, ev.k_tiles, fresh, weight if exact else None,
                             tuple([_name(b.instr, names) for b in body]),
                             body[0][2:] if body else ()))
                items.append(_PricedLoop(ev, weight, fresh))
            else:
                sigs.append((_name(ev[0], names),) + ev[2:])
                items.append(ev)
        self._trace.clear()
        for name, (sigs, items) in grouped.items():
            self._price(self.layers[name], tuple(sigs), items)
        return list(self.layers.values())

    def _price(self, lc, sig: tuple, items: list) -> None:
        sums = self.model.sums
        entry = sums.get(sig)
        if entry is None:  # the CostListener's own summation, in the same order
            part = LayerCost(lc.name, lc.kind)
            for item in items:
                part.add(self.loop_cost(*item) if isinstance(item, _PricedLoop)
                         else self.model.instr_cost(item))
            entry = sums[sig] = (part, self.model.actions_pj(part.actions),
                                 self.model.actions_pj(part.setup_actions))
        part = entry[0]
        lc.cycles, lc.setup_cycles = part.cycles, part.setup_cycles
        lc.actions, lc.setup_actions = dict(part.actions), dict(part.setup_actions)
        lc.energy_pj, lc.setup_energy_pj = entry[1], entry[2]
        attention = lc.kind == "attention"
        for item in items:
            if isinstance(item, _PricedLoop):
                self._count_loop(lc, item[0])
            elif attention:
                self._count_instr(lc, item)


class _PricedLoop(NamedTuple):
    event: LoopEvent
    weight: str | None
    fresh: bool  # its weight is loaded for the first time in this run: setup counts


def _name(instr, names: dict) -> str:
    """An instruction's mnemonic, memoised per class in `names` (flowc.isa instructions carry
    it as a class attribute; cost.mnemonic reads any other)."""
    cls = type(instr)
    name = names.get(cls)
    if name is None:
        if not isinstance(getattr(cls, "mnemonic", None), str):  # not the class's: per object
            return mnemonic(instr)
        name = names[cls] = cls.mnemonic
    return name


def priced_layers(interp: Interpreter, model) -> list[LayerCost]:
    """Per-layer costs of a plan's events on `model`'s machine, priced once per (program,
    machine) and kept on the plan: the events of a run are a function of the instructions
    and the shapes, which the input signature fixes, so every run of the plan has the same
    counts and the same costs. Each call returns fresh LayerCost objects (callers may edit)."""
    plan = interp.plan()
    if plan.events is None:
        raise ValueError("the plan has not recorded its events yet (run it with record=True)")
    key = model.machine  # frozen and hashable: equal machines share prices (hash: ~9 us)
    if key not in plan.priced:
        image = interp.image
        listener = FastCostListener(model, image.layers, image.tensors)
        for is_loop, ev in plan.events:
            (listener.on_loop if is_loop else listener.on_instr)(ev)
        plan.priced[key] = listener.finish()
    return [replace(lc, actions=dict(lc.actions), setup_actions=dict(lc.setup_actions))
            for lc in plan.priced[key]]


# Taken at import, when every module in PRICED_SOURCES is loaded (this module imports them):
# the digest then describes the code this process runs, not sources edited after it started
# (prices a process makes are stored under the code that made them). 0.2-0.5 ms of start-up.
code_digest()
