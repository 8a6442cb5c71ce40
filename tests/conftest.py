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
