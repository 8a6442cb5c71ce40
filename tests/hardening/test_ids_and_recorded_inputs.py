"""Token ids (issue 13): compile uses the example ids saved in the .pt2 (an nn.Embedding of
fewer than 100 rows compiles), and flowrun checks ids against the real vocabulary, not the
padded table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowc.backend.container import save
from flowc.cli.flowrun import main as flowrun_main
from flowc.frontend.load import load_model
from flowc.studies.compiler import CompileOptions, compile_captured

ROWS = 50


class _Tagger(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(ROWS, 32)
        self.head = torch.nn.Linear(32, 16)

    def forward(self, ids):
        return self.head(self.emb(ids))


@pytest.fixture(scope="module")
def fcim(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ids")
    torch.manual_seed(0)
    ids = torch.randint(0, ROWS, (1, 8))
    torch.export.save(torch.export.export(_Tagger().eval(), (ids,)), folder / "tagger.pt2")
    cap = load_model(folder / "tagger.pt2")
    assert cap.info["example_inputs"] == "recorded" and torch.equal(cap.example_inputs[0], ids)
    image = compile_captured(cap, CompileOptions(score="magnitude"), progress=None)
    save(image, folder / "tagger.fcim")
    return folder / "tagger.fcim"


@pytest.mark.parametrize(("ids", "code", "needle"), [
    (np.full((1, 8), ROWS - 1, np.int64), 0, ""),
    (np.full((1, 8), 7, np.int32), 0, ""),
    (np.full((1, 8), 7.0, np.float32), 0, ""),
    (np.full((1, 8), ROWS, np.int64), 2, f"outside the vocabulary 0..{ROWS - 1}"),
    (np.full((1, 8), -1, np.int64), 2, "outside the vocabulary"),
    (np.full((1, 8), 3.5, np.float32), 2, "not integers"),
])
def test_ids_are_checked_against_the_vocabulary(fcim, tmp_path, capsys, ids, code, needle):
    np.save(tmp_path / "ids.npy", ids)
    capsys.readouterr()
    assert flowrun_main([str(fcim), "--input", str(tmp_path / "ids.npy"), "--no-check", "-q"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert (err == []) if code == 0 else (len(err) == 1 and needle in err[0]), err
