"""`save` streams the zip into the file: the same bytes as `to_bytes`, loadable, atomic."""

from __future__ import annotations

import pytest

from flowc.backend.container import load_bytes, save, to_bytes


def test_saved_file_is_to_bytes_and_loads(compiled, tmp_path):
    image = compiled("mlp")
    path = tmp_path / "m.fcim"
    size = save(image, path)
    data = path.read_bytes()
    assert size == len(data) and data == to_bytes(image)
    assert load_bytes(data).program == image.program


def test_failed_write_leaves_no_file(compiled, tmp_path, monkeypatch):
    import flowc.backend.container as container

    def broken(members, out):
        out.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(container, "_write_zip", broken)
    with pytest.raises(OSError, match="disk full"):
        save(compiled("mlp"), tmp_path / "m.fcim")
    assert list(tmp_path.iterdir()) == []
