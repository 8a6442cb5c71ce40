"""Architecture names the lowering rules declare (`rule(..., archs=...)`) for the generated
table of docs/models.md. A slow test captures every tiny architecture and checks that each op
of its prepared graph has a rule declaring it, so the table cannot claim less than is used."""

from __future__ import annotations

TRANSFORMERS = ("llama", "mistral", "qwen2", "opt", "gpt2", "bert", "gpt_neox", "phi3", "gemma")
SSM = ("mamba", "rwkv")
PLAIN = "plain"  # plain nn.Modules (MLPs and the ops of tests/e2e/test_plain_ops.py)
ALL = (*TRANSFORMERS, *SSM, PLAIN)
ROPE = ("llama", "mistral", "qwen2", "gpt_neox", "phi3", "gemma")  # rotary: slice, cat, neg
GQA = ("llama", "mistral", "qwen2", "phi3", "gemma")  # grouped-query attention: expand
RMSNORM = ("llama", "mistral", "qwen2", "phi3", "gemma", "mamba")  # written out, then fused
