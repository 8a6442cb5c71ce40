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
