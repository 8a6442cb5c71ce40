"""--calib-text / --calib-data: real inputs change the Wanda statistics and the masks; the
report says where calibration came from; bad files are one-line errors naming the input."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch

from flowc.backend import container
from flowc.cli.main import main
from flowc.errors import UsageError
from flowc.frontend import checkpoint
from flowc.frontend.calib_data import CalibDataError, npz_calibration, text_calibration
from flowc.frontend.load import load_hf
from flowc.passes.graph import get_param, linear_nodes
from flowc.studies.compiler import CompileOptions, compile_captured

SEQ = 16
TEXT = """The committee met on Tuesday to discuss the budget for the coming year.
Several members argued that the library needed new books and longer opening hours.
Others wanted the money spent on repairing the roads before winter arrived.
After two hours of debate the chairman proposed a compromise that pleased nobody.
The vote was postponed until the next meeting, which will be held in March.
Meanwhile the mayor asked every department to prepare a list of urgent needs.
The newspaper printed the list on its front page, with a photograph of the hall.
Readers wrote dozens of letters, most of them about the potholes on Main Street.
""" * 4


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    """A tiny random LLaMA whose vocabulary is BERT's (30522 word pieces), saved with the
    all-MiniLM-L6-v2 tokenizer: a checkpoint folder with a real tokenizer and small weights."""
    import transformers as tf

    folder = tmp_path_factory.mktemp("lm") / "tiny-llama-wordpiece"
    config = tf.LlamaConfig(vocab_size=30522, hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=128, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tf.LlamaForCausalLM(config).eval().save_pretrained(folder)
    src = checkpoint.minilm_folder()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def lm(lm_folder):
    return load_hf(f"hf:{lm_folder}", seq_len=SEQ, calib_batches=2)


def _masks(cap, calib, record):
    cap = copy.deepcopy(cap)
    cap.info["calib"], cap.info["calib_source"] = calib, record
    image = compile_captured(cap, CompileOptions(nm=(2, 4), reference=False), progress=None)
    masks = {r.name: get_param(cap.gm, r.weight_target) != 0 for r in linear_nodes(cap.gm)}
    return masks, image.compile_info["calibration"]


def _differ(a: dict, b: dict) -> int:
    """Number of layers whose 2:4 masks differ."""
    return sum(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_text_and_npz_calibration_change_the_wanda_masks(lm, tmp_path) -> None:
    text_file = tmp_path / "calib.txt"
    text_file.write_text(TEXT)
    synthetic, rec_s = _masks(lm, None, None)
    for v in synthetic.values():  # 2:4 pruning everywhere but the tied lm_head/embedding
        assert v.float().mean().item() == pytest.approx(0.5) or v.all()
    calib, record = text_calibration(lm, text_file, 2)
    assert record == {"source": "text", "file": str(text_file), "samples": 2, "tokens": SEQ}
    assert all(x[0].shape == (1, SEQ) for x in calib)
    from_text, rec_t = _masks(lm, calib, record)
    gen = np.random.default_rng(5)
    ids = gen.integers(1000, 30000, size=(3, 1, SEQ))
    np.savez(tmp_path / "calib.npz", input_ids=ids)
    calib, record = npz_calibration(lm, tmp_path / "calib.npz")
    assert torch.equal(calib[2][0], torch.from_numpy(ids[2]))
    from_npz, rec_n = _masks(lm, calib, record)
    assert rec_s["source"] == "synthetic" and rec_s["used"] is True
    assert rec_t["source"] == "text" and rec_n == {**record, "used": True}
    assert _differ(synthetic, from_text) >= 10 and _differ(synthetic, from_npz) >= 10
    assert _differ(from_text, from_npz) >= 10


@pytest.mark.slow
def test_builtin_text_is_the_default_for_a_source_with_a_tokenizer(lm) -> None:
    assert lm.info["calib_source"]["source"] == "builtin-text"
    assert lm.info["calib_source"]["text"] in ("brown", "pydoc")
    assert len(lm.info["calib"]) == 2 and lm.info["calib"][0][0].shape == (1, SEQ)


class Embed(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(50, 8)
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.emb(input_ids))


def test_npz_validation_names_the_input(tmp_path) -> None:
    from flowc.frontend.load import capture

    lm = capture(Embed(), (torch.zeros(1, SEQ, dtype=torch.long),))
    bad = tmp_path / "bad.npz"
    np.savez(bad, input_ids=np.zeros((2, 1, SEQ + 1), dtype=np.int64))
    with pytest.raises(CalibDataError, match=rf"input 'input_ids' has shape \(2, 1, {SEQ + 1}\), "
                       rf"expected \(samples, 1, {SEQ}\)"):
        npz_calibration(lm, bad)
    np.savez(bad, input_ids=np.zeros((2, SEQ), dtype=np.float32))
    with pytest.raises(CalibDataError, match="input 'input_ids' is float32, the model takes "
                       "integer"):
        npz_calibration(lm, bad)
    np.savez(bad, tokens=np.zeros((2, SEQ), dtype=np.int64))
    with pytest.raises(CalibDataError, match="arrays tokens do not match the model inputs "
                       "input_ids"):
        npz_calibration(lm, bad)
    np.savez(bad, np.zeros((2, SEQ), dtype=np.int64))  # positional arr_0: accepted
    calib, record = npz_calibration(lm, bad)
    assert len(calib) == 2 and calib[0][0].shape == (1, SEQ) and record["samples"] == 2
    bad.write_text("not a zip")
    with pytest.raises(CalibDataError, match="not a readable .npz"):
        npz_calibration(lm, bad)


def test_calib_text_needs_a_tokenizer() -> None:
    from flowc.frontend.load import capture

    cap = capture(Embed(), (torch.zeros(1, SEQ, dtype=torch.long),), source="embed")
    with pytest.raises(CalibDataError, match="--calib-text needs the model's tokenizer and embed .*"
                       "give --calib-data"):
        text_calibration(cap, "whatever.txt", 2)


def test_cli_reports_synthetic_then_npz(tmp_path, capsys) -> None:
    """A .pt2 without calibration data: the log and the .fcim report say synthetic; with
    --calib-data the report records the file and the Wanda masks change."""
    pt2 = tmp_path / "mlp.pt2"
    assert main(["example", "mlp", "-o", str(pt2)]) == 0
    out_s, out_n = tmp_path / "s.fcim", tmp_path / "n.fcim"
    capsys.readouterr()
    assert main(["compile", str(pt2), "-o", str(out_s), "--nm", "2:4", "--no-reference"]) == 0
    err = capsys.readouterr().err
    assert "calibration: synthetic inputs (seeded standard-normal floats" in err
    info = container.load(out_s).compile_info["calibration"]
    assert info["source"] == "synthetic" and info["used"] is True
    from flowc.frontend.load import load_model

    shape = tuple(load_model(pt2).example_inputs[0].shape)
    data = np.random.default_rng(0).exponential(size=(3, *shape)).astype(np.float32) ** 3
    np.savez(tmp_path / "x.npz", data)
    assert main(["compile", str(pt2), "-o", str(out_n), "--nm", "2:4", "--no-reference",
                 "--calib-data", str(tmp_path / "x.npz")]) == 0
    err = capsys.readouterr().err
    assert "calibration: synthetic" not in err and "calibration: 3 samples from npz file" in err
    info = container.load(out_n).compile_info["calibration"]
    assert info == {"source": "npz", "file": str(tmp_path / "x.npz"), "samples": 3, "used": True}
    out_d = tmp_path / "d.fcim"  # dense: nothing reads calibration inputs, nothing is said
    assert main(["compile", str(pt2), "-o", str(out_d), "--no-reference"]) == 0
    assert "calibration: synthetic" not in capsys.readouterr().err
    assert container.load(out_d).compile_info["calibration"]["used"] is False
    a, b = container.load(out_s), container.load(out_n)
    differ = [k for k in a.tensors if k.endswith(".meta") and not np.array_equal(a.tensors[k],
                                                                                b.tensors[k])]
    assert differ, "the N:M metadata (which weights are kept) must change with the data"
    with pytest.raises(SystemExit):
        main(["compile", str(pt2), "--calib-text", "a", "--calib-data", "b", "--bogus"])
    with pytest.raises(UsageError, match="not both"):
        from flowc.cli.compile import run as cmd_compile
        from flowc.cli.main import build_flowc_parser

        cmd_compile(build_flowc_parser().parse_args(
            ["compile", str(pt2), "--calib-text", "a", "--calib-data", "b"]))
