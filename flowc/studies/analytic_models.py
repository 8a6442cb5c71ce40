"""GEMM layer lists built from a `transformers` config alone (no weights, no model object).

Analytic mode (`flowc.studies.analytic`) needs only the shapes of every static-weight GEMM, in the
order the lowering would run them, and which of them share an input (the lowering quantises a
buffer once, so q/k/v and gate/up share one `v.quant`). Building a 70B model, even on the meta
device, is slower than writing the list down from the hyper-parameters, so we do the latter.

Built-in configs carry the public hyper-parameters of each model card (config.json):
- LLaMA-2-7B / 70B: meta-llama/Llama-2-7b-hf, Llama-2-70b-hf (Touvron et al. 2023, Table 1).
- LLaMA-3-8B: meta-llama/Meta-Llama-3-8B (hidden 4096, MLP 14336, 32 heads, 8 KV heads).
- OPT-6.7B: facebook/opt-6.7b (Zhang et al. 2022, Table 1: 32 layers, 32 heads, d 4096).
- BERT-large: bert-large-uncased (Devlin et al. 2019: L 24, H 1024, A 16, FFN 4096).
- SmolLM2-135M: HuggingFaceTB/SmolLM2-135M (SPEC.md s4), the model FLOW runs on here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowc.errors import UsageError

BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {
    "llama-2-7b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
                   "num_attention_heads": 32, "num_key_value_heads": 32,
                   "num_hidden_layers": 32, "vocab_size": 32000},
    "llama-2-70b": {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672,
                    "num_attention_heads": 64, "num_key_value_heads": 8,
                    "num_hidden_layers": 80, "vocab_size": 32000},
    "llama-3-8b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
                   "num_attention_heads": 32, "num_key_value_heads": 8,
                   "num_hidden_layers": 32, "vocab_size": 128256},
    "opt-6.7b": {"model_type": "opt", "hidden_size": 4096, "ffn_dim": 16384,
                 "num_attention_heads": 32, "num_hidden_layers": 32, "vocab_size": 50272},
    "bert-large": {"model_type": "bert", "hidden_size": 1024, "intermediate_size": 4096,
                   "num_attention_heads": 16, "num_hidden_layers": 24, "vocab_size": 30522},
    "smollm2-135m": {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
                     "num_attention_heads": 9, "num_key_value_heads": 3,
                     "num_hidden_layers": 30, "vocab_size": 49152},
}
DECODERS = ("llama", "mistral", "qwen2", "opt")
ENCODERS = ("bert",)


@dataclass(frozen=True)
class Gemm:
    """One GEMM as the lowering emits it: `tokens` vectors through W[out, in].

    `shares_input`: the input buffer was already quantised by an earlier GEMM (no v.quant).
    `runtime_weight`: the "weight" is an activation (attention K^T or V) written into the
    macros every inference, never resident. `count` identical GEMMs run one after another.
    """

    name: str
    in_features: int
    out_features: int
    tokens: int
    bias: bool = False
    shares_input: bool = False
    kind: str = "gemm"  # gemm | attention
    runtime_weight: bool = False
    count: int = 1
    block: int = -1  # decoder/encoder block index, -1 outside blocks


@dataclass(frozen=True)
class Shapes:
    """The hyper-parameters the GEMM list needs, normalised across model families."""

    family: str
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    layers: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def resolve_config(config: str | Mapping[str, Any] | object) -> dict[str, Any]:
    """A built-in name, a config.json path or model directory, a dict, or a
    `transformers.PretrainedConfig` -> plain dict."""
    if isinstance(config, str | Path):
        text = str(config)
        if text in BUILTIN_CONFIGS:
            return dict(BUILTIN_CONFIGS[text])
        path = Path(text) / "config.json" if Path(text).is_dir() else Path(text)
        if path.suffix == ".json" and path.is_file():
            try:
                return dict(json.loads(path.read_text(encoding="utf-8")))
            except ValueError as exc:
                raise UsageError(f"{path}: not a JSON model config ({exc})") from None
        raise UsageError(f"unknown model config {text!r} (built-in: "
                         f"{', '.join(BUILTIN_CONFIGS)}; or a config.json / model directory)")
    if isinstance(config, Mapping):
        return dict(config)
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    raise UsageError(f"not a model config: {type(config).__name__}")


def shapes_of(config: str | Mapping[str, Any] | object) -> Shapes:
    d = resolve_config(config)
    family = d.get("model_type", "llama")
    if family not in DECODERS + ENCODERS:
        raise UsageError(f"model_type {family!r}: analytic mode knows "
                         f"{', '.join(DECODERS + ENCODERS)}")
    try:
        hidden, heads = int(d["hidden_size"]), int(d["num_attention_heads"])
        inter = int(d["ffn_dim"] if family == "opt" else d["intermediate_size"])
        return Shapes(family, hidden, inter, heads,
                      int(d.get("num_key_value_heads") or heads),
                      int(d["num_hidden_layers"]), int(d["vocab_size"]))
    except KeyError as exc:
        raise UsageError(f"model config lacks {exc.args[0]!r}") from None


def linear_gemms(s: Shapes, tokens: int, lm_tokens: int) -> list[Gemm]:
    """Every static-weight Linear in execution order, named by its module path."""
    h, kv = s.hidden, s.kv_heads * s.head_dim
    out: list[Gemm] = []
    for b in range(s.layers):
        if s.family == "bert":
            p = f"bert.encoder.layer.{b}"
            rows = [(f"{p}.attention.self.query", h, h, False),
                    (f"{p}.attention.self.key", h, h, True),
                    (f"{p}.attention.self.value", h, h, True),
                    (f"{p}.attention.output.dense", h, h, False),
                    (f"{p}.intermediate.dense", h, s.intermediate, False),
                    (f"{p}.output.dense", s.intermediate, h, False)]
        elif s.family == "opt":
            p = f"model.decoder.layers.{b}"
            rows = [(f"{p}.self_attn.q_proj", h, h, False), (f"{p}.self_attn.k_proj", h, h, True),
                    (f"{p}.self_attn.v_proj", h, h, True),
                    (f"{p}.self_attn.out_proj", h, h, False),
                    (f"{p}.fc1", h, s.intermediate, False), (f"{p}.fc2", s.intermediate, h, False)]
        else:
            p = f"model.layers.{b}"
            rows = [(f"{p}.self_attn.q_proj", h, h, False), (f"{p}.self_attn.k_proj", h, kv, True),
                    (f"{p}.self_attn.v_proj", h, kv, True),
                    (f"{p}.self_attn.o_proj", h, h, False),
                    (f"{p}.mlp.gate_proj", h, s.intermediate, False),
                    (f"{p}.mlp.up_proj", h, s.intermediate, True),
                    (f"{p}.mlp.down_proj", s.intermediate, h, False)]
        bias = s.family in ("bert", "opt")
        out += [Gemm(n, k, o, tokens, bias, shared, block=b) for n, k, o, shared in rows]
    if s.family == "bert":
        out.append(Gemm("bert.pooler.dense", h, h, 1, True))
    elif lm_tokens:
        out.append(Gemm("lm_head", h, s.vocab, lm_tokens))
    return out


def attention_gemms(s: Shapes, tokens: int, kv_len: int) -> list[Gemm]:
    """Attention act x act matmuls as dense GEMMs with runtime-written "weights".

    Per block and KV head: S = Q K^T with K^T [head_dim -> kv_len] as the macro weight and the
    heads/kv_heads query heads of the group as tokens; then O = P V with V [kv_len -> head_dim].
    The full kv_len is computed (a causal mask does not skip work on a weight-stationary array).
    """
    group = s.heads // s.kv_heads
    out: list[Gemm] = []
    for b in range(s.layers):
        p = f"{'bert.encoder.layer' if s.family == 'bert' else 'model.layers'}.{b}.attn"
        out.append(Gemm(f"{p}.qk", s.head_dim, kv_len, tokens * group, kind="attention",
                        runtime_weight=True, count=s.kv_heads, block=b))
        out.append(Gemm(f"{p}.pv", kv_len, s.head_dim, tokens * group, kind="attention",
                        runtime_weight=True, count=s.kv_heads, block=b))
    return out
