"""flowrun vs ONNX Runtime wall time on the same model and inputs, measured side by side.

    python bench/run_vs_ort.py [--model mlp|block] [--nm 2:4] [--repeat 300] [--processes 10]

The model is compiled, priced and written as `flowc compile` does (per-layer costs stored in
the .fcim), then read back as `flowrun` reads it. One `flowrun` call runs a fresh interpreter
once, so every flowrun sample here is a cold call on a fresh interpreter (its plan prepared
before the clock starts, as flowrun prepares it before it runs):
- functional: the run alone, no accounting;
- accounted, stored prices: `simulate()` as flowrun calls it on the .fcim (the compile's
  prices read under their key; nothing recorded or priced);
- accounted, priced afresh: the same .fcim without its stored prices (`--price off`, or
  another machine): the run records its events and prices them from scratch;
- ORT: the embedded reference model with 1 and 2 intra-op threads on warm sessions, and
  with 2 threads whose workers spin between operators (ONNX Runtime's default); the
  fastest is the baseline.
Samples alternate so machine noise hits all variants alike. With `--processes N`, each
variant also runs N times as the only call of a fresh Python process (imports, .fcim read,
verifier and plan preparation before the clock; the run and its accounting timed; ORT: a
fresh session, its first run timed): first calls in a process are slower. The code digest of
the price key is taken when flowc.runtime.priced is imported (before the clock); its check is
timed separately and printed. Not a timed test: read the ratios.
"""

from __future__ import annotations

import os

# Before torch loads: OpenMP workers wait as flowrun's do (flowc/host.py: a bounded spin on
# an idle host, sleeping otherwise; spinning workers starve the other core of a busy 2-core
# machine), unless the environment says otherwise.
from flowc.host import openmp_wait_mode, openmp_waiting  # noqa: E402

openmp_waiting(spin=True)

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("functional", "stored", "afresh", "ort1", "ort2", "ort2s")
LABELS = {"functional": "flowrun functional", "stored": "flowrun accounted, stored prices",
          "afresh": "flowrun accounted, priced afresh", "ort1": "onnxruntime 1 thread",
          "ort2": "onnxruntime 2 threads", "ort2s": "onnxruntime 2 threads, spinning"}


def compiled_fcim(model_name: str, nm: str) -> bytes:
    """The .fcim bytes `flowc compile` would write (priced on its machine)."""
    from flowc.backend.container import to_bytes
    from flowc.frontend.load import capture
    from flowc.runtime.priced import price_image
    from flowc.studies.compiler import CompileOptions, compile_captured, parse_nm
    from flowc.studies.examples import build

    model, inputs = build(model_name)
    image = compile_captured(capture(model, inputs, "bench"),
                             CompileOptions(nm=parse_nm(nm)), progress=None)
    price_image(image)
    return to_bytes(image)


class Calls:
    """One cold call of each variant on a loaded .fcim (fresh interpreter per flowrun call)."""

    def __init__(self, data: bytes) -> None:
        from flowc.backend.container import load_bytes
        from flowc.runtime.check import ort_session
        from flowc.runtime.verifier import verify

        self.image = load_bytes(data, "bench.fcim")
        if self.image.priced is None:
            raise SystemExit("bench: the compiled .fcim carries no stored prices")
        verify(self.image)
        self.unpriced = dataclasses.replace(self.image, priced=None)
        self.samples = list(self.image.samples)
        self.onnx = self.image.reference_model()
        self.sessions: dict[str, object] = {}  # variant -> session
        self._ort_session = ort_session

    def ort_session(self, variant: str, fresh: bool = False):
        if fresh or variant not in self.sessions:
            self.sessions[variant] = self._ort_session(self.onnx, threads=int(variant[3]),
                                                       spin=variant.endswith("s"))
        return self.sessions[variant]

    def prepared(self, image):
        from flowc.runtime.interpreter import Interpreter

        interp = Interpreter(image)
        interp.plan()  # weights unpacked, steps resolved: flowrun does this before the run
        return interp

    def timed(self, variant: str, fresh_session: bool = False) -> float:
        from flowc.runtime.check import run_reference
        from flowc.runtime.session import simulate

        if variant.startswith("ort"):
            sess = self.ort_session(variant, fresh_session)
            t0 = time.perf_counter()
            run_reference(self.onnx, self.samples, session=sess)
            return time.perf_counter() - t0
        image = self.unpriced if variant == "afresh" else self.image
        interp = self.prepared(image)
        t0 = time.perf_counter()
        if variant == "functional":
            interp.run(self.samples)
        else:
            _, report = simulate(image, self.samples, interpreter=interp)
            if not report.layers:
                raise SystemExit("bench: no accounting in the report")
        return time.perf_counter() - t0


def in_process(calls: Calls, repeat: int) -> tuple[dict[str, float], dict[str, float]]:
    """Medians per variant, and per accounted variant the median of its paired differences
    to the functional sample of the same round (less exposed to load swings)."""
    for v in VARIANTS:  # warm-up: torch's first calls, ORT arenas
        calls.timed(v)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(repeat):
        for v in VARIANTS:
            times[v].append(calls.timed(v))
    paired = {v: statistics.median([a - b for a, b in zip(times[v], times["functional"],
                                                           strict=True)])
              for v in ("stored", "afresh")}
    return {v: statistics.median(t) for v, t in times.items()}, paired


def fresh_processes(path: str, n: int) -> dict[str, float]:
    """Medians over fresh processes; a `stored` child whose key missed (flowc's code changed
    while the bench ran: the child priced afresh) is left out and counted."""
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    missed, digest = 0, []
    for _ in range(n):
        for v in VARIANTS:
            done = subprocess.run([sys.executable, __file__, "--child", path, v],
                                  capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"bench: the {v} child failed:\n{done.stderr}")
            out = json.loads(done.stdout.strip().splitlines()[-1])
            digest.append(out["digest_s"])
            if v == "stored" and not out["stored_hit"]:
                missed += 1
                continue
            times[v].append(out["seconds"])
    print(f"  (per process, at import, not in the timed call: the code digest's check, median "
          f"{statistics.median(digest) * 1e3:.3f} ms)")
    if missed:
        print(f"  ({missed} stored-price children missed their key and were left out)")
    if not times["stored"]:
        raise SystemExit("bench: every stored-price child missed (flowc code changing?)")
    return {v: statistics.median(t) for v, t in times.items()}


def report(title: str, med: dict[str, float], paired: dict[str, float] | None = None) -> None:
    ort = min(med[v] for v in VARIANTS if v.startswith("ort"))
    print(title)
    for v in VARIANTS:
        print(f"  {LABELS[v]:34s} {med[v] * 1e3:9.3f} ms")
    for v in ("functional", "stored", "afresh"):
        over = "" if v == "functional" else \
            f", overhead {100 * (med[v] / med['functional'] - 1):+.1f} % over functional"
        if paired and v in paired:
            over += (f" (median paired difference {paired[v] * 1e3:+.3f} ms = "
                     f"{100 * paired[v] / med['functional']:+.1f} %)")
        print(f"  {LABELS[v]:34s} {med[v] / ort:5.2f}x ORT{over}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mlp", choices=["mlp", "block"])
    ap.add_argument("--nm", default="2:4")
    ap.add_argument("--repeat", type=int, default=300)
    ap.add_argument("--processes", type=int, default=0, metavar="N",
                    help="also N fresh processes per variant (one call each)")
    ap.add_argument("--child", nargs=2, metavar=("FCIM", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        from flowc.runtime.priced import stored_layers

        calls = Calls(Path(args.child[0]).read_bytes())
        seconds = calls.timed(args.child[1], fresh_session=True)
        hit = stored_layers(calls.image, "int8") is not None  # after the clock: the key held
        # the code digest is taken when flowc.runtime.priced is imported, before the clock:
        # its check (the cache's stamp, sources unchanged) timed once more here
        from flowc.runtime import priced

        priced.code_digest.cache_clear()
        t0 = time.perf_counter()
        priced.code_digest()
        print(json.dumps({"seconds": seconds, "stored_hit": hit,
                          "digest_s": time.perf_counter() - t0}))
        return

    data = compiled_fcim(args.model, args.nm)
    calls = Calls(data)
    shapes = [tuple(s.shape) for s in calls.samples]
    load0 = os.getloadavg()
    med, paired = in_process(calls, args.repeat)
    print(f"model {args.model} at {args.nm}, inputs {shapes}; OpenMP workers: "
          f"{openmp_wait_mode()}; load average {load0[0]:.2f} "
          f"before, {os.getloadavg()[0]:.2f} after")
    report(f"one process, a fresh interpreter per flowrun call, {args.repeat} alternating "
           "samples, median:", med, paired)
    if args.processes:
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "bench.fcim")
            Path(path).write_bytes(data)
            med = fresh_processes(path, args.processes)
        report(f"a fresh process per call, {args.processes} per variant, median (load "
               f"average {os.getloadavg()[0]:.2f} after):", med)


if __name__ == "__main__":
    from flowc.host import keep_big_blocks

    keep_big_blocks()  # glibc keeps activation-sized blocks, as the CLI does
    main()
