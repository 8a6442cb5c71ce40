"""`flowc compile MODEL`: load a model, run the pass pipeline, lower it and write a .fcim."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from flowc.errors import UsageError

HF_PREFIX = "hf:"  # flowc.frontend.load.HF_PREFIX, repeated here to check paths before torch


def register(subparsers, add_debug: Callable[[argparse.ArgumentParser], None]) -> None:
    p = subparsers.add_parser("compile", help="compile a PyTorch model to a .fcim program")
    p.add_argument("model", help="model file: torch.export (.pt2/.pt), TorchScript, a pickle; or a "
                   "model source hf:smollm2-135m, hf:all-minilm-l6-v2 (real weights), "
                   "hf:tiny-<arch> (random weights; arch: llama, mistral, qwen2, opt, gpt2, bert, gpt_neox, "
                   "phi3, gemma), hf:PATH (checkpoint folder with config.json "
                   "or a .gguf file), hf:ORG/NAME (local Hugging Face cache, offline)")
    add_hf_arguments(p)
    p.add_argument("-o", "--output", help="output .fcim (default: <model>.fcim here)")
    p.add_argument("--nm", help="uniform N:M pattern, N kept per group of M (e.g. 2:4)")
    p.add_argument("--score", default="wanda", choices=["wanda", "magnitude"],
                   help="pruning score for --nm (default wanda, calibrated on seeded inputs)")
    p.add_argument("-p", "--pipeline", help="pass pipeline, e.g. 'calibrate,nm-prune{n=2,m=4},"
                   "verify-nm,quantize' (overrides --nm)")
    p.add_argument("--target", default="flexcim", help="built-in machine (default flexcim)")
    p.add_argument("--machine", help="machine description file (TOML/JSON); overrides --target")
    p.add_argument("--input-shape", help="example input shape(s), e.g. 1x784 or 2x16,2x8")
    p.add_argument("--calib-batches", type=int, default=4,
                   help="calibration samples (synthetic, built-in text or --calib-text)")
    p.add_argument("--eval-windows", type=int, default=8, metavar="N",
                   help="hf: language models: held-out windows (last 10 %% of the built-in text; "
                        "as UTF-8 bytes for the random hf:tiny-* decoders) on which the compile "
                        "measures dense vs pruned fp32 perplexity; 0: off")
    p.add_argument("--calib-text", metavar="FILE", help="calibrate on this UTF-8 text, tokenised "
                   "with the model's tokenizer into windows of the example input length")
    p.add_argument("--calib-data", metavar="NPZ", help="calibrate on these arrays: one per model "
                   "input (named like the inputs or arr_0..), first dimension = samples")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading a pickled nn.Module (unpickling runs arbitrary code)")
    p.add_argument("--no-reference", action="store_true",
                   help="do not embed the reference ONNX model (flowrun cannot check)")
    p.add_argument("--no-fp32", action="store_true",
                   help="do not embed fp32 weights (smaller; no --numerics fp32)")
    p.add_argument("--pass-cache", action=argparse.BooleanOptionalAction, default=None,
                   help="reuse the passes' result (and the held-out perplexity) stored by an "
                        "earlier compile of exactly the same inputs and options, and store "
                        "it (default: on for hf: sources with real weights, off otherwise; "
                        "folder: the weights cache's, FLOWC_CACHE_DIR=off disables both)")
    p.add_argument("--price", choices=["auto", "on", "off"], default="auto",
                   help="run the program once and store its per-layer costs on the target in "
                        "the .fcim, so flowrun reads them instead of pricing its run: auto "
                        "(default) when one run is at most 2^35 operations (up to about a "
                        "second of simulation, e.g. SmolLM2-135M at 128 tokens, where pricing "
                        "is a few %% of a run or more), on, off")
    add_debug(p)
    p.set_defaults(func=run)


def add_hf_arguments(p: argparse.ArgumentParser) -> None:
    """The options that shape how an hf: model source is loaded (compile and compare)."""
    p.add_argument("--seq-len", type=int, help="hf: sources: tokens per sequence (SmolLM2 "
                   "default 128 = the built-in prompt; tiny models default 32)")
    p.add_argument("--prompt", help="hf:smollm2-135m: the prompt text (cycled or cut to --seq-len)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="hf: checkpoints whose config asks for their own Python code (auto_map)")


def check_hf_arguments(args: argparse.Namespace, hf: bool) -> None:
    if not hf and (args.seq_len or args.prompt):
        raise UsageError("--seq-len and --prompt apply to hf: model sources only")
    if not hf and args.trust_remote_code:
        raise UsageError("--trust-remote-code applies to hf: model sources only")
    if args.seq_len is not None and args.seq_len < 1:
        raise UsageError(f"--seq-len must be >= 1, got {args.seq_len}")


def run(args: argparse.Namespace) -> int:
    from flowc.cli.paths import check_input, check_output

    hf = args.model.startswith(HF_PREFIX)
    # hf:ORG/NAME, hf:/path/folder, hf:file.gguf -> NAME.fcim / folder.fcim / file.fcim here
    name = Path(args.model[len(HF_PREFIX):].rstrip("/")) if hf else Path(args.model)
    default = (name.name.removesuffix(".gguf") if hf else name.stem) + ".fcim"
    out = Path(args.output or default)
    # before torch loads (seconds): a wrong output path fails at once
    check_output(out, "-o", None if hf else args.model, args.calib_text, args.calib_data,
                 args.machine)
    if not hf:
        check_input(args.model, "model file")
    from flowc.backend.container import save
    from flowc.frontend.load import check_hf_source, load_hf, load_model
    from flowc.studies.compiler import CompileOptions, compile_captured, parse_nm, stderr_progress

    check_hf_arguments(args, hf)
    if args.calib_text and args.calib_data:
        raise UsageError("give --calib-text or --calib-data, not both")
    if hf:
        check_hf_source(args.model)
    opts = CompileOptions(
        nm=parse_nm(args.nm) if args.nm else None, score=args.score, pipeline=args.pipeline,
        target=args.target, machine_file=args.machine, reference=not args.no_reference,
        keep_fp32=not args.no_fp32, calib_batches=args.calib_batches,
        pass_cache=args.pass_cache if args.pass_cache is not None
        else hf and not args.model.startswith(HF_PREFIX + "tiny-"),
    )
    progress = None if args.quiet else stderr_progress
    if progress:
        progress(f"loading {args.model} ...")
    if hf:
        cap = load_hf(args.model, seq_len=args.seq_len, prompt=args.prompt,
                      calib_batches=args.calib_batches, progress=progress,
                      trust_remote_code=args.trust_remote_code, eval_windows=args.eval_windows)
    else:
        cap = load_model(args.model, input_shapes=args.input_shape, trust_pickle=args.trust_pickle)
    _user_calibration(cap, args, progress)
    image = compile_captured(cap, opts, progress=progress)
    if args.price != "off" and image.samples:
        _price(image, args.price == "on", progress)
    if progress:
        progress(f"writing {out} ...")
    t0 = time.perf_counter()
    size = save(image, out)
    if progress:
        progress(f"writing done in {time.perf_counter() - t0:.2f} s")
    if not args.quiet:
        from flowc.backend.container import size_report

        gemms = [info for info in image.layers if info.kind == "gemm"]
        print(f"wrote {out} ({size / 1e6:.2f} MB): {len(gemms)} CiM layers, "
              f"{len(image.program.instructions)} instructions, target {image.compile_info['target']}")
        sizes, floor = size_report(out), image.weight_bytes()
        if floor:
            print(f"size: machine payload {sizes['machine'] / 1e6:.2f} MB = "
                  f"{sizes['machine'] / floor:.3f} x (int8 kept weights + metadata bits, "
                  f"{floor / 1e6:.2f} MB); whole file {sizes['total'] / floor:.3f} x "
                  f"(fp32 check payload {sizes['check'] / 1e6:.2f} MB)")
    return 0


def _price(image, always: bool, progress) -> None:
    """Run the program once on its sample inputs and store its per-layer costs on the target
    (flowc.runtime.priced): a flowrun call on the same machine reads them instead of pricing.
    Unless `always`, only programs of at most AUTO_PRICE_WORK operations are priced."""
    from flowc.runtime.priced import AUTO_PRICE_WORK, price_image
    from flowc.runtime.verifier import verify

    work = verify(image).work
    if not always and work > AUTO_PRICE_WORK:
        if progress:
            bound = AUTO_PRICE_WORK.bit_length() - 1
            progress(f"pricing skipped: one run is ~{work:.2g} operations (> 2^{bound}; flowrun "
                     "prices it, a small share of such a run; --price on stores it)")
        return
    if progress:
        progress(f"pricing on {image.machine['name']} (one run of the sample inputs) ...")
    seconds = price_image(image)
    if progress:
        progress(f"pricing done in {seconds:.2f} s")


def _user_calibration(cap, args: argparse.Namespace, progress) -> None:
    """--calib-text / --calib-data replace the source's calibration inputs (cap.info)."""
    from flowc.frontend.calib_data import npz_calibration, text_calibration

    if args.calib_text:
        calib, record = text_calibration(cap, args.calib_text, args.calib_batches)
    elif args.calib_data:
        calib, record = npz_calibration(cap, args.calib_data)
    else:
        return
    cap.info["calib"], cap.info["calib_source"] = calib, record
    if progress:
        progress(f"calibration: {record['samples']} samples from {record['source']} "
                 f"file {record['file']}")
