"""`flowc compare hf:...` calibrates on the model's own text, as `flowc compile` does."""

from __future__ import annotations

import flowc.studies.compare as compare_mod
from flowc.cli.main import main


def test_compare_passes_the_sources_own_calibration(monkeypatch, tmp_path):
    seen = {}
    real = compare_mod.compare_captured

    def spy(cap, targets, opts, progress=None, calib=None, inputs=None):
        seen["calib"], seen["own"] = calib, cap.info.get("calib")
        seen["source"] = cap.info.get("calib_source") or cap.info.get("calib_text")
        return real(cap, targets, opts, progress, calib=calib, inputs=inputs)

    monkeypatch.setattr(compare_mod, "compare_captured", spy)
    assert main(["compare", "hf:tiny-llama", "--targets", "flexcim", "--nm", "2:4", "-q",
                 "--json", str(tmp_path / "c.json")]) == 0
    assert seen["own"] and seen["calib"] is seen["own"]  # the text windows, not synthetic
    assert all(tuple(x.shape) == (1, 32) for sample in seen["calib"] for x in sample)


def test_compare_takes_the_sequence_length_of_an_hf_source(tmp_path):
    out = tmp_path / "c.json"
    assert main(["compare", "hf:tiny-llama", "--seq-len", "12", "--targets", "flexcim",
                 "--nm", "2:4", "-q", "--json", str(out)]) == 0
    import json

    (result,) = json.loads(out.read_text())["results"]
    q = next(lay for lay in result["layers"] if lay["name"].endswith("layers.0.self_attn.q_proj"))
    assert q["macs"] == 12 * 64 * 64  # 12 tokens through a 64 x 64 projection


def test_compare_refuses_hf_options_on_a_model_file(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "m.pt2"), "--seq-len", "8"]) == 2
    assert "--seq-len and --prompt apply to hf: model sources only" in capsys.readouterr().err
