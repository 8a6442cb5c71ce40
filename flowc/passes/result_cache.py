"""A content-addressed cache of a pass pipeline's result (`flowc compile`'s passes stage).

Why: on SmolLM2 the passes of `make run` (calibrate, uniform 4:8, nm-prune with the OBS
update, quantize with smoothing) and the held-out perplexity before and after them run the
model ~50 times over the calibration and held-out windows; the result is a pure function of
what goes in. A second compile of the same model with the same options reads it back.

Key (`result_key`): sha256 over everything that determines the result: the graph (every
node's `format_node()`), the bytes of every tensor it reads, the nodes' `meta["flowc"]`
annotations, the example, calibration and held-out inputs, the caller's options (pipeline,
machine, ...), the torch and numpy versions and a digest of flowc's own source files (a code
change is a miss; the package version alone would not notice one).

Entry: a folder named by the key under `<cache root>/passes/` (the weights cache's root,
flowc.frontend.model_cache: FLOWC_CACHE_DIR, `off` disables both) holding `tensors.safetensors`
(the parameters the passes replaced or changed, and the arrays of the annotations),
`result.json` (annotations as typed JSON, the reports, the caller's extra values) and a
marker written last. It is written under a temporary name and renamed when complete.
A pipeline that changes the graph's structure (adds or removes nodes) is not stored: only
parameters and annotations are restored.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from flowc.frontend.model_cache import cache_root

FORMAT = "flowc pass cache 1"
KEEP = 4  # entries kept (the most recently stored): every flowc edit changes every key
MARKER = "flowc-complete"
TENSORS = "tensors.safetensors"
RESULT = "result.json"


class Uncacheable(Exception):
    """An annotation value has a type the cache cannot store exactly (never user-visible:
    the result is then simply not stored)."""


def _source_digest() -> str:
    """sha256 over flowc's own .py files (path and bytes), so a code change misses."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def pass_code_digest(classes: Iterable[type]) -> str | None:
    """sha256 over the source files of the passes' classes (and their bases) that live outside
    flowc, e.g. a plugin's or a user's own pass, so editing one misses like a flowc edit does;
    None when such a class has no source file (defined interactively): no key can cover it."""
    flowc_root = Path(__file__).resolve().parents[1]
    files: set[Path] = set()
    for cls in classes:
        for base in cls.__mro__:
            if base.__module__ == "builtins":
                continue
            module = sys.modules.get(base.__module__)
            path = getattr(module, "__file__", None)
            if not path:
                return None
            path = Path(path).resolve()
            if not path.is_relative_to(flowc_root):
                files.add(path)
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of any tensor (0-d, empty, any dtype numpy lacks such as bfloat16)."""
    flat = t.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _update_tensor(h: Any, t: torch.Tensor) -> None:
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(_tensor_bytes(t))


def _attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def attr_tensors(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    """Every tensor a get_attr node of `gm` reads, by target."""
    out = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            value = _attr(gm, str(n.target))
            if isinstance(value, torch.Tensor):
                out[str(n.target)] = value
    return out


def structure(gm: fx.GraphModule) -> list[str]:
    return [n.format_node() or n.name for n in gm.graph.nodes]


def result_key(gm: fx.GraphModule, inputs: Iterable[torch.Tensor], extra: dict[str, Any]) -> str:
    """The hex key of a pass run on `gm` with these input tensors and `extra` (JSON)."""
    import numpy

    h = hashlib.sha256(FORMAT.encode())
    import onnx

    h.update(json.dumps({"torch": torch.__version__, "numpy": numpy.__version__,
                         "onnx": onnx.__version__,
                         "flowc source": _source_digest(), **extra},
                        sort_keys=True, default=str).encode())
    for line in structure(gm):
        h.update(line.encode() + b"\n")
    for target, t in sorted(attr_tensors(gm).items()):
        h.update(target.encode())
        _update_tensor(h, t)
    arrays: dict[str, np.ndarray] = {}
    meta = {n.name: _encode(n.meta["flowc"], arrays) for n in gm.graph.nodes
            if n.meta.get("flowc")}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(arrays):
        _update_tensor(h, torch.from_numpy(np.ascontiguousarray(arrays[name])))
    for t in inputs:
        _update_tensor(h, t)
    return h.hexdigest()


# --- typed JSON for node annotations ----------------------------------------------------------


def _encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """JSON that `_decode` turns back into an equal value of the same types."""
    if value is None or isinstance(value, bool | str):
        return {"v": value}
    if isinstance(value, int | float) and type(value) in (int, float):
        return {"v": value}
    if isinstance(value, np.generic):
        return {"np": value.dtype.str, "v": value.item()}
    if isinstance(value, np.ndarray | torch.Tensor):
        name = f"a{len(arrays)}"
        is_torch = isinstance(value, torch.Tensor)
        arr = value.detach().cpu().numpy() if is_torch else value
        if arr.dtype == object:
            raise Uncacheable("object array")
        arrays[name] = arr
        return {"torch" if is_torch else "a": name}
    if isinstance(value, tuple | list):
        return {"t" if isinstance(value, tuple) else "l": [_encode(v, arrays) for v in value]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise Uncacheable("non-string key")
        return {"d": {k: _encode(v, arrays) for k, v in value.items()}}
    raise Uncacheable(type(value).__name__)


def _decode(data: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    if "np" in data:
        return np.dtype(data["np"]).type(data["v"])
    if "v" in data:
        return data["v"]
    if "a" in data:
        arr = arrays[data["a"]]
        return arr if arr.flags.writeable else arr.copy()
    if "torch" in data:
        return torch.from_numpy(arrays[data["torch"]].copy())
    if "t" in data:
        return tuple(_decode(v, arrays) for v in data["t"])
    if "l" in data:
        return [_decode(v, arrays) for v in data["l"]]
    return {k: _decode(v, arrays) for k, v in data["d"].items()}


# --- store and load ---------------------------------------------------------------------------


class Snapshot:
    """What the passes may change, taken before they run: the graph's structure and the
    identity and version of every tensor it reads (a replaced or written tensor differs)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.structure = structure(gm)
        self.tensors = {k: (t, t._version) for k, t in attr_tensors(gm).items()}

    def changed(self, gm: fx.GraphModule) -> dict[str, torch.Tensor] | None:
        """The tensors the passes replaced or wrote, or None if the structure changed."""
        if structure(gm) != self.structure:
            return None
        now = attr_tensors(gm)
        return {k: t for k, t in now.items()
                if k not in self.tensors or self.tensors[k][0] is not t
                or self.tensors[k][1] != t._version}


def enabled() -> bool:
    """False when FLOWC_CACHE_DIR=off."""
    return cache_root() is not None


def entry_dir(key: str) -> Path | None:
    root = cache_root()
    return None if root is None else root / "passes" / key[:40]


def store(key: str, gm: fx.GraphModule, before: Snapshot, extra: dict[str, Any]
          ) -> tuple[bool, str]:
    """Store the passes' result; returns whether it was stored and what the log should say
    (where, or why not)."""
    import safetensors.numpy

    entry = entry_dir(key)
    if entry is None:
        return False, "pass cache off"
    changed = before.changed(gm)
    if changed is None:
        return False, "not cached: the passes changed the graph's structure"
    arrays: dict[str, np.ndarray] = {}
    try:
        meta = {n.name: _encode(n.meta["flowc"], arrays) for n in gm.graph.nodes
                if n.meta.get("flowc")}
        params = {k: _encode(t.detach(), arrays) for k, t in changed.items()}
        text = json.dumps({"format": FORMAT, "key": key, "meta": meta, "params": params,
                           "extra": extra}, sort_keys=True)
    except (Uncacheable, TypeError, ValueError) as exc:
        return False, f"not cached: {exc}"
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".tmp-", dir=entry.parent))
        safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                                    str(tmp / TENSORS))
        (tmp / RESULT).write_text(text)
        (tmp / MARKER).write_text(key + "\n")
        try:
            tmp.rename(entry)
        except OSError:  # another compile stored the same entry first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        _evict(entry.parent)
    except OSError as exc:  # the compile itself must not fail
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"[flowc] note: could not store the pass cache in {entry.parent} ({exc})",
              file=sys.stderr)
        return False, "not cached: write failed"
    return True, f"stored in the pass cache ({entry})"


def load_file(key: str, name: str) -> bytes | None:
    """An extra output stored beside an entry (`store_file`), or None."""
    entry = entry_dir(key)
    if entry is None or not (entry / MARKER).is_file():
        return None
    try:
        return (entry / name).read_bytes()
    except OSError:
        return None


def store_file(key: str, name: str, data: bytes) -> bool:
    """Store a later stage's output that is a function of the entry's key alone (the
    reference ONNX model of the pruned graph) beside the entry: temp file + rename."""
    entry = entry_dir(key)
    if entry is None or not (entry / MARKER).is_file():
        return False
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=entry)
        with open(fd, "wb") as f:
            f.write(data)
        Path(tmp).replace(entry / name)
    except OSError:
        return False
    return True


def _evict(folder: Path) -> None:
    """Remove all but the KEEP most recently stored complete entries."""
    done = [p for p in folder.iterdir() if (p / MARKER).is_file()]
    done.sort(key=lambda p: (p / MARKER).stat().st_mtime, reverse=True)
    for old in done[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)


def load(key: str, gm: fx.GraphModule) -> dict[str, Any] | None:
    """Apply a stored result to `gm` (parameters, annotations); its `extra`, or None on a
    miss (or an entry that does not fit this graph: then nothing is changed)."""
    import safetensors.numpy

    from flowc.passes.graph import set_param

    entry = entry_dir(key)
    if entry is None or not (entry / MARKER).is_file():
        return None
    try:
        data = json.loads((entry / RESULT).read_text())
        arrays = safetensors.numpy.load_file(str(entry / TENSORS))
    except (OSError, ValueError):
        return None
    nodes = {n.name: n for n in gm.graph.nodes}
    current = attr_tensors(gm)
    if data.get("key") != key or not set(data["meta"]) <= set(nodes) \
            or not set(data["params"]) <= set(current):
        return None
    params = {target: _decode(enc, arrays) for target, enc in data["params"].items()}
    if any(tuple(v.shape) != tuple(current[k].shape) for k, v in params.items()):
        return None
    for target, value in params.items():
        set_param(gm, target, value)
    for n in gm.graph.nodes:
        n.meta.pop("flowc", None)
    for name, enc in data["meta"].items():
        nodes[name].meta["flowc"] = _decode(enc, arrays)
    return data["extra"]
