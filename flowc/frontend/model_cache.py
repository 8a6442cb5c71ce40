"""A content-addressed cache of dequantised checkpoints (SmolLM2's GGUF as safetensors).

Why: transformers dequantises SmolLM2's Q4_1 GGUF on every load (~15 s here, the largest
stage of `make run`'s compile). The dequantised model is a pure function of the GGUF's bytes,
the dtype and the transformers version, so it is saved once with `save_pretrained`
(safetensors weights, config, tokenizer) in a folder named by those, and later loads read it
back (~1 s). The folder is written under a temporary name and renamed when complete, so a
crash never leaves a half-written entry that a later load would trust.

Location: $FLOWC_CACHE_DIR, else $XDG_CACHE_HOME/flowc, else ~/.cache/flowc (docs/cli.md).
FLOWC_CACHE_DIR=off disables the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ENV = "FLOWC_CACHE_DIR"
MARKER = "flowc-complete"  # written last: its presence means the entry is whole
WEIGHTS = "model.safetensors"
TOKENIZER = "flowc-tokenizer"  # present when the entry carries a tokenizer


def cache_root() -> Path | None:
    """The cache folder, or None when FLOWC_CACHE_DIR=off."""
    env = os.environ.get(ENV)
    if env == "off":
        return None
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flowc"


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (read in 16 MB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def entry_name(source: Path, dtype: torch.dtype) -> str:
    import transformers

    key = f"{file_digest(source)}|{dtype}|transformers {transformers.__version__}"
    return f"{source.stem}-{hashlib.sha256(key.encode()).hexdigest()[:20]}"


def cached_pretrained(source: Path, dtype: torch.dtype, attn: str,
                      load: Callable[[], tuple[nn.Module, object]]) -> tuple[nn.Module, object]:
    """(model, tokenizer) from the cache entry of `source`, or `load()` then stored."""
    import safetensors.torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = cache_root()
    if root is None:
        return load()
    entry = root / entry_name(source, dtype)
    if (entry / MARKER).is_file():
        model = AutoModelForCausalLM.from_pretrained(entry, dtype=dtype,
                                                     attn_implementation=attn)
        tokenizer = AutoTokenizer.from_pretrained(entry) if (entry / TOKENIZER).is_file() \
            else None
        return model.eval(), tokenizer
    model, tokenizer = load()
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".tmp-", dir=root))
        # save_pretrained refuses GGUF-loaded models: the config and the plain weights are
        # all a later load needs (the dequantised tensors are ordinary float tensors)
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
        safetensors.torch.save_model(model, str(tmp / WEIGHTS))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            (tmp / TOKENIZER).write_text("saved\n")
        (tmp / MARKER).write_text(f"{source}\n")
        try:
            tmp.rename(entry)
        except OSError:  # another process stored the same entry first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except (OSError, ValueError, TypeError) as exc:  # the load itself must not fail
        import sys

        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"[flowc] note: could not store the weights cache in {root} ({exc})",
              file=sys.stderr)
    return model, tokenizer
