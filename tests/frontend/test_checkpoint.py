"""Real checkpoints from disk: hf:PATH folders, hf:ORG/NAME from the offline cache, remote
code refused, encoders with a tokenised pair and mask, the MiniLM package located."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
import torch

from flowc.errors import ModelLoadError, UsageError
from flowc.frontend import checkpoint, hf
from flowc.frontend.load import load_hf

SEQ = 8


def _ops(gm) -> Counter:
    return Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_function")


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    hf.tiny_model("llama").save_pretrained(folder)
    return folder


def test_folder_checkpoint_loads_like_the_builtin_tiny_model(llama_folder) -> None:
    cap = load_hf(f"hf:{llama_folder}", seq_len=SEQ)
    ref = load_hf("hf:tiny-llama", seq_len=SEQ, calib_batches=1)
    assert cap.output_names == ("logits",) and cap.input_names == ("input_ids",)
    assert _ops(cap.gm) == _ops(ref.gm)
    ids = ref.example_inputs
    torch.testing.assert_close(cap.gm(*ids), ref.gm(*ids), rtol=0, atol=0)  # same weights
    assert "calib" not in cap.info  # no tokenizer: the compiler falls back to synthetic


def test_remote_code_is_refused_unless_trusted(llama_folder, tmp_path) -> None:
    folder = tmp_path / "remote"
    shutil.copytree(llama_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"asks for remote code \(AutoModelForCausalLM\).*"
                       "--trust-remote-code"):
        load_hf(f"hf:{folder}", seq_len=SEQ)


def test_missing_files_are_one_line_errors(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_hf(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="config.json but no weights"):
        load_hf(f"hf:{tmp_path}")
    (tmp_path / "weights.txt").write_text("")
    with pytest.raises(ModelLoadError, match="must be a .gguf checkpoint"):
        load_hf(f"hf:{tmp_path / 'weights.txt'}")
    with pytest.raises(UsageError, match="unknown model source 'hf:tiny-falcon'"):
        load_hf("hf:tiny-falcon")
    with pytest.raises(UsageError, match="unknown model source 'hf:smollm2'; known: "
                       "hf:smollm2-135m, hf:all-minilm-l6-v2, .*hf:PATH"):
        load_hf("hf:smollm2")


def test_org_name_resolves_from_the_offline_cache(llama_folder, tmp_path, monkeypatch) -> None:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(ModelLoadError, match=f"not in the local Hugging Face cache {cache}"):
        load_hf("hf:someorg/tiny-llama")
    # the hub cache layout: models--ORG--NAME/{refs/main, snapshots/<revision>/files}
    repo = cache / "models--someorg--tiny-llama"
    revision = "0" * 40
    shutil.copytree(llama_folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    cap = load_hf("hf:someorg/tiny-llama", seq_len=SEQ)
    assert cap.source == "hf:someorg/tiny-llama" and _ops(cap.gm)["aten.linear.default"] == 15


def test_auto_class_follows_the_config_architectures() -> None:
    import transformers as tf

    assert checkpoint.auto_class({"architectures": ["LlamaForCausalLM"]}) is tf.AutoModelForCausalLM
    assert checkpoint.auto_class({"architectures": ["GPT2LMHeadModel"]}) is tf.AutoModelForCausalLM
    assert checkpoint.auto_class({"architectures": ["BertForMaskedLM"]}) is tf.AutoModelForMaskedLM
    assert checkpoint.auto_class({"architectures": ["BertModel"]}) is tf.AutoModel


def test_masked_lm_checkpoint_gives_logits(tmp_path) -> None:
    import transformers as tf

    config = hf._tiny_config("bert")
    config.architectures = ["BertForMaskedLM"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tf.BertForMaskedLM(config).eval().save_pretrained(tmp_path)
    cap = load_hf(f"hf:{tmp_path}", seq_len=SEQ)
    model = tf.BertForMaskedLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = cap.example_inputs[0]
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    assert cap.output_names == ("logits",)
    torch.testing.assert_close(cap.gm(ids), ref, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_minilm_inputs_are_a_tokenised_pair_with_padding_masked() -> None:
    """hf:all-minilm-l6-v2: files found through the installed package; inputs are the real
    tokenisation of the built-in pair; the prepared graph computes the eager encoder."""
    from transformers import AutoModel, AutoTokenizer

    from flowc.frontend.sources import DEFAULT_PAIR, ENCODER_SEQ

    folder = checkpoint.minilm_folder()
    assert (folder / "model.safetensors").is_file()
    cap = load_hf("hf:all-minilm-l6-v2", calib_batches=2)
    assert cap.input_names == ("input_ids", "attention_mask", "token_type_ids")
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(*DEFAULT_PAIR, padding="max_length", max_length=ENCODER_SEQ, return_tensors="pt")
    for name, x in zip(cap.input_names, cap.example_inputs, strict=True):
        assert torch.equal(x, enc[name])
    mask = cap.example_inputs[1][0]
    assert 0 < int(mask.sum()) < ENCODER_SEQ  # padding present and masked
    assert int(cap.example_inputs[2].sum()) > 0  # the second sentence's segment ids
    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = model(**{k: enc[k] for k in cap.input_names}).last_hidden_state
    torch.testing.assert_close(cap.gm(*cap.example_inputs), ref, rtol=0, atol=1e-5)
    assert cap.info["calib_source"]["source"] == "builtin-text" and len(cap.info["calib"]) == 2


@pytest.mark.slow
def test_gguf_file_is_a_checkpoint_source() -> None:
    """hf:FILE.gguf: SmolLM2's GGUF through the generic loader (dequantised by transformers)."""
    path = hf.smollm2_gguf()
    ckpt = checkpoint.resolve(str(path))
    assert ckpt.folder == path.parent and ckpt.gguf_file == path.name
    model, tok = checkpoint.load_checkpoint(ckpt)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert tok is not None and len(tok("compute in memory")["input_ids"]) > 0
