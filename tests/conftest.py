import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _share_the_cores() -> None:
    """Under pytest-xdist (`make test` runs TEST_WORKERS workers), each worker's torch and BLAS
    get cores // workers threads, set before anything imports torch: two workers on two
    cores each run one thread instead of four threads contending for two cores. An explicit
    OMP_NUM_THREADS in the environment is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        threads = str(max(1, len(os.sched_getaffinity(0)) // workers))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(var, threads)


_share_the_cores()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def compiled():
    """compiled(name, nm, score) -> Image of a built-in example, cached for the session."""
    from flowc.frontend.load import capture
    from flowc.studies.compiler import CompileOptions, compile_captured
    from flowc.studies.examples import build

    cache = {}

    def get(name="mlp", nm=(2, 4), score="magnitude", reference=True):
        key = (name, nm, score, reference)
        if key not in cache:
            model, inputs = build(name)
            cap = capture(model, inputs, source=f"example:{name}")
            opts = CompileOptions(nm=nm, score=score, reference=reference)
            cache[key] = compile_captured(cap, opts, progress=None)
        return cache[key]

    return get


# Every program the tests compile (through compile_captured, in tests and in-process CLI calls)
# also runs through the execution plan and the batched handlers right after compiling: every
# buffer must agree bit for bit (int8 numerics; batched loops == the tile-by-tile reference is
# tested on the examples in tests/runtime/test_plan.py). A mismatch fails the compiling test.
PLAN_CHECKS = {"checked": 0, "without samples": 0}


def _check_plans_of_compiles() -> None:
    import flowc.studies.compiler as compiler
    from flowc.runtime.plan import mismatches

    original = compiler.compile_captured

    def compile_and_check(*args, **kwargs):
        image = original(*args, **kwargs)
        if not image.samples:
            PLAN_CHECKS["without samples"] += 1
            return image
        bad = mismatches(image, "int8", against="batched")
        assert not bad, f"plan != batched handlers on {len(bad)} buffers, first {bad[:3]}"
        PLAN_CHECKS["checked"] += 1
        return image

    compiler.compile_captured = compile_and_check


_check_plans_of_compiles()


class _WorkerCounts:
    """With pytest-xdist: each worker hands its PLAN_CHECKS to the controller, which adds
    them up before its summary (the workers' own summaries are not shown)."""

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error):
        for key, n in node.workeroutput.get("plan_checks", {}).items():
            PLAN_CHECKS[key] += n


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_WorkerCounts(), "flowc-plan-checks")


def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker
        workeroutput["plan_checks"] = dict(PLAN_CHECKS)


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"plan == handlers on every compiled program: {PLAN_CHECKS}")
