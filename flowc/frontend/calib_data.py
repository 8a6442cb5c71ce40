"""Calibration inputs from the user's data: `--calib-text FILE` and `--calib-data FILE.npz`.

Why: Wanda scores |W| * ||X||, so the statistics are only as good as the inputs X. Seeded
random inputs (flowc's fallback) say nothing about a real model's activations; these loaders
turn the user's text or arrays into argument tuples for the captured graph, checked against
its example inputs so a mismatch is one line naming the input, not a torch error mid-pass.

Each loader returns (inputs, source) where `source` is the record the compile report keeps
under `calibration` (source kind, file, sample count).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flowc.errors import UsageError
from flowc.frontend.load import Captured


class CalibDataError(UsageError):
    """The calibration file does not fit the model (shape, dtype, names, tokenizer)."""


SYNTHETIC = ("seeded standard-normal floats and random integers (below the rows of the "
             "embedding table an input indexes, else 0..99) of the example input shapes")


def synthetic_source(batches: int, seed: int) -> dict:
    return {"source": "synthetic", "inputs": SYNTHETIC, "seed": seed, "samples": batches}


def text_calibration(cap: Captured, path: str | Path, count: int) -> tuple[list[tuple], dict]:
    """`count` samples of tokenised text from `path`, with the model's tokenizer, each of the
    example inputs' length: consecutive token windows for a language model (one input),
    consecutive line pairs padded with their attention mask for an encoder."""
    from flowc.frontend.text import load_text, token_windows

    tok = cap.info.get("tokenizer")
    if tok is None:
        raise CalibDataError(f"--calib-text needs the model's tokenizer and {cap.source} has "
                             "none (hf: sources with a tokenizer have one); give --calib-data "
                             "FILE.npz instead")
    text = load_text(str(path))
    if count < 1:
        raise CalibDataError(f"--calib-text: need at least 1 sample, got {count}")
    if cap.input_names == ("input_ids",):
        ex = cap.example_inputs[0]
        batch, seq_len = (int(d) for d in ex.shape)
        windows = token_windows(tok, text, count * batch, seq_len, f"--calib-text {path}")
        inputs = [(torch.cat([w[0] for w in windows[i * batch:(i + 1) * batch]]),)
                  for i in range(count)]
    else:
        from flowc.frontend.sources import encoder_inputs, sentence_pairs

        seq_len = int(cap.example_inputs[0].shape[-1])
        pairs = sentence_pairs(text, count)
        inputs = []
        for a, b in pairs:
            feeds = encoder_inputs(tok, a, b, seq_len)
            missing = [n for n in cap.input_names if n not in feeds]
            if missing:
                raise CalibDataError(f"--calib-text: the tokenizer gives no {missing[0]!r} input")
            inputs.append(tuple(feeds[n] for n in cap.input_names))
    return inputs, {"source": "text", "file": str(path), "samples": len(inputs),
                    "tokens": int(cap.example_inputs[0].shape[-1])}


def npz_calibration(cap: Captured, path: str | Path) -> tuple[list[tuple], dict]:
    """One array per model input from `path` (.npz), named like the inputs or `arr_0..`
    (np.savez positional order); the first dimension counts samples, the rest is the example
    input's shape (or its shape without a leading batch of 1). Every sample is used."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CalibDataError(f"--calib-data {path}: not a readable .npz file ({exc})") from exc
    with archive:
        arrays = _arrays_by_input(cap, archive, path)
    counts = {len(a) for a in arrays}
    if len(counts) != 1:
        sizes = ", ".join(f"{n}: {len(a)}" for n, a in zip(cap.input_names, arrays, strict=True))
        raise CalibDataError(f"--calib-data {path}: inputs have different sample counts ({sizes})")
    count = counts.pop()
    if count < 1:
        raise CalibDataError(f"--calib-data {path}: no samples (first dimension is 0)")
    per_input = [_samples(name, arr, ex, path) for name, arr, ex
                 in zip(cap.input_names, arrays, cap.example_inputs, strict=True)]
    inputs = [tuple(col[i] for col in per_input) for i in range(count)]
    return inputs, {"source": "npz", "file": str(path), "samples": count}


def _arrays_by_input(cap: Captured, archive, path: Path) -> list[np.ndarray]:
    keys = list(archive.files)
    names = list(cap.input_names)
    if set(names) <= set(keys):
        chosen = names
    elif all(f"arr_{i}" in keys for i in range(len(names))):
        chosen = [f"arr_{i}" for i in range(len(names))]
    else:
        raise CalibDataError(
            f"--calib-data {path}: arrays {', '.join(keys) or '(none)'} do not match the model "
            f"inputs {', '.join(names)} (name them so, or save them positionally as arr_0..)")
    extra = sorted(set(keys) - set(chosen))
    if extra:
        raise CalibDataError(f"--calib-data {path}: array {extra[0]!r} is not a model input "
                             f"(inputs: {', '.join(names)})")
    return [archive[k] for k in chosen]


def _samples(name: str, arr: np.ndarray, example: torch.Tensor, path: Path) -> list[torch.Tensor]:
    shape = tuple(example.shape)
    if tuple(arr.shape[1:]) == shape:
        take = lambda a: a  # noqa: E731
    elif shape and shape[0] == 1 and tuple(arr.shape[1:]) == shape[1:]:
        take = lambda a: a[None]  # noqa: E731
    else:
        raise CalibDataError(f"--calib-data {path}: input {name!r} has shape {tuple(arr.shape)}, "
                             f"expected (samples, {', '.join(map(str, shape))})")
    if example.dtype.is_floating_point != np.issubdtype(arr.dtype, np.floating) or \
            arr.dtype == np.bool_ and example.dtype != torch.bool:
        kind = "floating-point" if example.dtype.is_floating_point else "integer"
        raise CalibDataError(f"--calib-data {path}: input {name!r} is {arr.dtype}, the model "
                             f"takes {kind} ({str(example.dtype).replace('torch.', '')})")
    return [torch.from_numpy(np.ascontiguousarray(take(a))).to(example.dtype) for a in arr]
