import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

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


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"plan == handlers on every compiled program: {PLAN_CHECKS}")
