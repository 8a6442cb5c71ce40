"""Loading a hostile .pt2 never runs code from it (issue 13): the two unpickling fallbacks of
torch.export.load are closed, zip CRCs are checked before torch reads the file, and a damaged
archive is one ModelLoadError line (exit 2) without torch's log noise."""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
import zipfile

import pytest
import torch

from flowc.errors import ModelLoadError
from flowc.frontend.load import load_model
from flowc.frontend.safe_pt2 import PickleRefused, no_unpickling, scan_archive


class _Payload:
    """Unpickling this creates the file `marker` (stands for arbitrary code)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return torch.relu(self.fc(x))


def _saved(tmp_path) -> pathlib.Path:
    torch.manual_seed(0)
    ep = torch.export.export(_Tiny().eval(), (torch.randn(2, 8),))
    path = tmp_path / "tiny.pt2"
    torch.export.save(ep, path)
    return path


def _rewrite(src: pathlib.Path, dst: pathlib.Path, edit) -> pathlib.Path:
    """Copy the zip `src` to `dst`, replacing members: edit(name, data) -> new data."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, edit(info.filename, zin.read(info.filename)))
    return dst


def _pickled(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _sample_inputs_payload(tmp_path, marker) -> pathlib.Path:
    """Fallback 1: the sample inputs fail the weights-only load; torch retries unsafely."""
    bomb = _pickled(_Payload(str(marker)))
    return _rewrite(_saved(tmp_path), tmp_path / "evil_samples.pt2",
                    lambda n, d: bomb if n.endswith("sample_inputs/model.pt") else d)


def _use_pickle_payload(tmp_path, marker) -> pathlib.Path:
    """Fallback 2: a weights config entry with use_pickle=true makes torch unpickle it."""
    bomb = _pickled(_Payload(str(marker)))
    src = _saved(tmp_path)
    with zipfile.ZipFile(src) as zf:
        cfg_name = next(n for n in zf.namelist() if n.endswith("model_weights_config.json"))
        cfg = json.loads(zf.read(cfg_name))
    entry = cfg["config"]["fc.weight"]
    entry["use_pickle"] = True
    target = entry["path_name"]

    def edit(name, data):
        if name == cfg_name:
            return json.dumps(cfg).encode()
        if name.endswith(f"data/weights/{target}"):
            return bomb
        return data

    return _rewrite(src, tmp_path / "evil_weights.pt2", edit)


@pytest.mark.parametrize("craft", [_sample_inputs_payload, _use_pickle_payload])
def test_payload_is_real_but_flowc_never_runs_it(tmp_path, craft):
    marker = tmp_path / "pwned"
    path = craft(tmp_path, marker)
    # the payload is live: plain torch.export.load executes it
    with contextlib.suppress(Exception):
        torch.export.load(str(path))
    assert marker.exists(), "the crafted archive should run code through plain torch"
    marker.unlink()
    with pytest.raises(ModelLoadError) as err:
        load_model(path)
    assert not marker.exists()
    assert "--trust-pickle" in str(err.value) and "\n" not in str(err.value)


def test_guard_alone_blocks_the_fallback(tmp_path):
    """Even without the scan, torch.load under no_unpickling is weights-only."""
    marker = tmp_path / "pwned"
    path = _sample_inputs_payload(tmp_path, marker)
    with pytest.raises(PickleRefused), no_unpickling(path):
        torch.export.load(str(path))
    assert not marker.exists()
    assert torch.load is not None and torch.load.__name__ == "load"  # restored


def test_bit_flip_in_a_stored_weight_is_caught_by_crc(tmp_path):
    path = _saved(tmp_path)
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("weights/weight_0"))
    data = bytearray(path.read_bytes())
    local = info.header_offset  # the local header's own name/extra lengths (torch pads extra)
    start = local + 30 + int.from_bytes(data[local + 26:local + 28], "little") + \
        int.from_bytes(data[local + 28:local + 30], "little")
    data[start + 5] ^= 0x10
    bad = tmp_path / "flipped.pt2"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="weight_0.* is corrupt"):
        scan_archive(bad)


def test_duplicate_member_is_refused(tmp_path):
    path = _saved(tmp_path)
    with zipfile.ZipFile(path) as zf:
        name = zf.namelist()[0]
    with zipfile.ZipFile(path, "a") as zf, pytest.warns(UserWarning):
        zf.writestr(name, b"x")
    with pytest.raises(ModelLoadError, match="appears twice"):
        scan_archive(path)


def test_clean_archive_loads_with_its_recorded_inputs(tmp_path):
    cap = load_model(_saved(tmp_path))
    assert cap.info["example_inputs"] == "recorded"
    torch.manual_seed(0)
    _Tiny()
    expected = torch.randn(2, 8)  # the export's example input, drawn after the same seed
    assert torch.equal(cap.example_inputs[0], expected)
    same = load_model(_saved(tmp_path), input_shapes="2x8")  # the recorded shape: same inputs
    assert torch.equal(same.example_inputs[0], expected)


def test_compile_cli_is_one_line_without_torch_noise(tmp_path, capfd):
    from flowc.cli.main import main as flowc_main

    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    (tmp_path / "flip.pt2").write_bytes(bytes(data))
    garbage = _rewrite(path, tmp_path / "garbage.pt2",
                       lambda n, d: b"garbage" * 9 if n.endswith("sample_inputs/model.pt") else d)
    for bad, needle in ((tmp_path / "flip.pt2", "corrupt"), (garbage, "not readable weights-only")):
        capfd.readouterr()
        assert flowc_main(["compile", str(bad), "-o", str(tmp_path / "x.fcim"), "-q"]) == 2
        captured = capfd.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and captured.out == "", err
    assert not (tmp_path / "x.fcim").exists()
