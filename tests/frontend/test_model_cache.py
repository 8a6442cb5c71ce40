"""The weights cache: a second load reads the stored safetensors and gives the same model."""

import pytest
import torch

from flowc.frontend import model_cache
from flowc.frontend.hf import tiny_model


@pytest.mark.slow  # transformers imports: ~8 s in a fresh process
def test_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(model_cache.ENV, str(tmp_path / "cache"))
    source = tmp_path / "weights.gguf"
    source.write_bytes(b"stand-in checkpoint bytes")
    calls = []

    def load():
        calls.append(1)
        return tiny_model("llama"), None

    first, _ = model_cache.cached_pretrained(source, torch.float32, "eager", load)
    second, tok = model_cache.cached_pretrained(source, torch.float32, "eager", load)
    assert len(calls) == 1 and tok is None
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.tensor([[1, 5, 9, 200]])
    with torch.no_grad():
        assert torch.equal(first(ids).logits, second(ids).logits)
    entries = [p.name for p in (tmp_path / "cache").iterdir()]
    assert len(entries) == 1 and (tmp_path / "cache" / entries[0] / model_cache.MARKER).is_file()
    # the key is the content: other bytes -> another entry, loaded afresh
    source.write_bytes(b"other checkpoint bytes")
    model_cache.cached_pretrained(source, torch.float32, "eager", load)
    assert len(calls) == 2 and len(list((tmp_path / "cache").iterdir())) == 2


def test_cache_off_always_loads(tmp_path, monkeypatch):
    monkeypatch.setenv(model_cache.ENV, "off")
    source = tmp_path / "w.gguf"
    source.write_bytes(b"x")
    calls = []

    def load():
        calls.append(1)
        return tiny_model("llama"), None

    for _ in range(2):
        model_cache.cached_pretrained(source, torch.float32, "eager", load)
    assert len(calls) == 2 and model_cache.cache_root() is None
