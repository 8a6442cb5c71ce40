"""Command-line interface: `flowc compile|disasm|asm|...` and `flowrun`.

Thin by design: parse arguments, call the library, render results. Errors a user can fix are
printed as one line (`flowc: error: ...`) with a documented exit code; tracebacks only with
--debug. Exit codes: see flowc/errors.py and docs/cli.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from flowc.errors import FlowcError, UsageError

# torch's OpenMP workers spin between parallel regions by default; on a small shared machine
# that starves every other thread (measured on 2 busy cores: a SmolLM2 calibration pass went
# from 1.8 s to 50 s). Passive waiting must be chosen before torch loads, i.e. here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Subcommands that live in their own modules (flowc/commands/*.py): each defines
# `register(subparsers, add_debug)` that adds its parser and sets `func` to a handler taking
# the parsed args and returning an exit code.
COMMAND_MODULES: tuple[str, ...] = (
    "flowc.commands.compare", "flowc.commands.analytic", "flowc.commands.eval",
)


def _add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def _guard(prog: str, fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return fn(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # map every failure to one line + an exit code
        if getattr(args, "debug", False):
            raise
        code = exc.exit_code if isinstance(exc, FlowcError) else _foreign_exit_code(exc)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if code == 70:
            msg = f"internal error: {type(exc).__name__}: {msg} (rerun with --debug)"
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return code


def _foreign_exit_code(exc: Exception) -> int:
    """Errors raised by pass/ISA/machine modules that do not derive from FlowcError
    (matched on the class and its bases, so a subclass such as EnergyError maps too)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"AsmError", "DecodeError", "IsaError"}:
        return 4
    if names & {"PassError", "PruneError", "VerifyError", "InfeasibleTarget", "CalibrationError",
                "RegistryError", "PipelineError", "GraphError"}:
        return 3
    if "MachineConfigError" in names:
        return 2
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
        return 2
    return 70


# -- flowc compile -----------------------------------------------------------------------------
def cmd_compile(args: argparse.Namespace) -> int:
    from flowc.backend.container import save
    from flowc.frontend.load import HF_PREFIX, check_hf_source, is_hf_source, load_hf, load_model
    from flowc.studies.compiler import CompileOptions, compile_captured, parse_nm, stderr_progress

    hf = is_hf_source(args.model)
    # hf:ORG/NAME, hf:/path/folder, hf:file.gguf -> NAME.fcim / folder.fcim / file.fcim here
    name = Path(args.model[len(HF_PREFIX):].rstrip("/")) if hf else Path(args.model)
    default = (name.name.removesuffix(".gguf") if hf else name.stem) + ".fcim"
    out = Path(args.output or default)
    if out.exists() and out.is_dir():
        raise UsageError(f"-o {out}: is a directory")
    if not hf and (args.seq_len or args.prompt):
        raise UsageError("--seq-len and --prompt apply to hf: model sources only")
    if not hf and args.trust_remote_code:
        raise UsageError("--trust-remote-code applies to hf: model sources only")
    if args.calib_text and args.calib_data:
        raise UsageError("give --calib-text or --calib-data, not both")
    if hf:
        check_hf_source(args.model)
    opts = CompileOptions(
        nm=parse_nm(args.nm) if args.nm else None, score=args.score, pipeline=args.pipeline,
        target=args.target, machine_file=args.machine, reference=not args.no_reference,
        keep_fp32=not args.no_fp32, calib_batches=args.calib_batches,
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
    if progress:
        progress(f"writing {out} ...")
    size = save(image, out)
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


# -- flowc disasm / asm ------------------------------------------------------------------------
def cmd_disasm(args: argparse.Namespace) -> int:
    from flowc import isa
    from flowc.backend.container import load, write_atomic

    path = Path(args.file)
    program = load(path).program if path.suffix == ".fcim" else isa.decode(path.read_bytes())
    text = isa.disassemble(program)
    if args.output:
        write_atomic(args.output, text.encode())
    else:
        sys.stdout.write(text)
    return 0


def cmd_asm(args: argparse.Namespace) -> int:
    from flowc import isa
    from flowc.backend.container import write_atomic

    path = Path(args.file)
    program = isa.assemble(path.read_text(), filename=str(path))
    out = args.output or str(path.with_suffix(".bin"))
    write_atomic(out, isa.encode(program))
    print(f"wrote {out} ({len(program.instructions)} instructions)")
    return 0


def cmd_example(args: argparse.Namespace) -> int:
    from flowc.studies.examples import save_example

    out = args.output or f"{args.name}.pt2"
    save_example(args.name, out, seed=args.seed)
    print(f"wrote {out} (torch.export program of the built-in example '{args.name}')")
    return 0


def build_flowc_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowc", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile a PyTorch model to a .fcim program")
    p.add_argument("model", help="model file: torch.export (.pt2/.pt), TorchScript, a pickle; or a "
                   "model source hf:smollm2-135m, hf:all-minilm-l6-v2 (real weights), "
                   "hf:tiny-<arch> (random weights; arch: llama, mistral, qwen2, opt, gpt2, bert, gpt_neox, "
                   "phi3, gemma), hf:PATH (checkpoint folder with config.json "
                   "or a .gguf file), hf:ORG/NAME (local Hugging Face cache, offline)")
    p.add_argument("--seq-len", type=int, help="hf: sources: tokens per sequence (SmolLM2 "
                   "default 128 = the built-in prompt; tiny models default 32)")
    p.add_argument("--prompt", help="hf:smollm2-135m: the prompt text (cycled or cut to --seq-len)")
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
                   help="hf: language models: held-out windows (last 10 %% of the built-in text) "
                        "on which the compile measures dense vs pruned fp32 perplexity; 0: off")
    p.add_argument("--calib-text", metavar="FILE", help="calibrate on this UTF-8 text, tokenised "
                   "with the model's tokenizer into windows of the example input length")
    p.add_argument("--calib-data", metavar="NPZ", help="calibrate on these arrays: one per model "
                   "input (named like the inputs or arr_0..), first dimension = samples")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="hf: checkpoints whose config asks for their own Python code (auto_map)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading a pickled nn.Module (unpickling runs arbitrary code)")
    p.add_argument("--no-reference", action="store_true",
                   help="do not embed the reference ONNX model (flowrun cannot check)")
    p.add_argument("--no-fp32", action="store_true",
                   help="do not embed fp32 weights (smaller; no --numerics fp32)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    _add_debug(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("example", help="write a built-in example model (torch.export .pt2)")
    p.add_argument("name", choices=["mlp", "block"])
    p.add_argument("-o", "--output")
    p.add_argument("--seed", type=int, default=0)
    _add_debug(p)
    p.set_defaults(func=cmd_example)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub, _add_debug)

    p = sub.add_parser("disasm", help="print the assembly of a .fcim or a binary program")
    p.add_argument("file")
    p.add_argument("-o", "--output")
    _add_debug(p)
    p.set_defaults(func=cmd_disasm)

    p = sub.add_parser("asm", help="assemble a text program into the binary encoding")
    p.add_argument("file")
    p.add_argument("-o", "--output")
    _add_debug(p)
    p.set_defaults(func=cmd_asm)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_flowc_parser().parse_args(argv)
    return _guard("flowc", args.func, args)


# -- flowrun -------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from flowc.runtime.session import run_image_file

    report = run_image_file(
        args.file, inputs=args.input, numerics=args.numerics, mode=args.mode,
        check=not args.no_check, progress=not args.quiet,
    )
    if args.json:
        from flowc.backend.container import write_atomic

        write_atomic(args.json, (json.dumps(report.to_dict(), indent=1, sort_keys=True) + "\n").encode())
    if not args.quiet or report.check is None or not report.check.passed:
        print(report.render())
    if report.check is not None and not report.check.passed:
        return 1
    return 0


def build_flowrun_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowrun", description="execute a .fcim program on the "
                                "simulated FlexCiM machine, report cycles and energy, and check "
                                "the outputs against ONNX Runtime")
    p.add_argument("file", help="the .fcim program")
    p.add_argument("--input", action="append", metavar="NPY",
                   help="input array (.npy), once per model input; default: the embedded samples")
    p.add_argument("--numerics", default="int8", choices=["int8", "fp32"],
                   help="int8 (the machine) or fp32 (CiM GEMMs unquantised, to isolate lowering)")
    p.add_argument("--mode", default="batched", choices=["batched", "reference"],
                   help="batched (fast) or reference (tile by tile) loop execution")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime check")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="print only on a failed check")
    _add_debug(p)
    p.set_defaults(func=cmd_run)
    return p


def flowrun_main(argv: Sequence[str] | None = None) -> int:
    args = build_flowrun_parser().parse_args(argv)
    return _guard("flowrun", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
