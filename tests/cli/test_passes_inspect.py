"""`flowc passes [NAME]` (built-in and plugin passes with their options) and `flowc inspect`."""

from __future__ import annotations

import dataclasses
import json
import re
import zipfile
from importlib.metadata import EntryPoint

import pytest

from flowc.cli.main import main
from flowc.passes import Pass, registry
from flowc.studies.examples import save_example
from flowc.studies.results import machine_entry


@dataclasses.dataclass(frozen=True)
class Halve(Pass):
    """Scale every weight by `factor` (a plugin pass for this test).

    Nothing else."""

    name = "halve"
    factor: float = 0.5


@pytest.fixture()
def with_plugin(monkeypatch):
    registry.available_passes()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "_BROKEN", {})
    eps = (EntryPoint(name="halve", value=f"{__name__}:Halve", group="flowc.passes"),
           EntryPoint(name="broken", value="no_such_module_xyz:P", group="flowc.passes"))
    monkeypatch.setattr(registry, "entry_points", lambda group: eps)


def test_passes_lists_builtins_and_plugins_with_options(with_plugin, capsys):
    with pytest.warns(registry.PluginWarning, match="cannot load pass plugin 'broken'"):
        assert main(["passes"]) == 0
    out = capsys.readouterr().out
    for name in registry.available_passes():
        cls = registry.get_pass(name)
        line = next(x for x in out.splitlines() if x.startswith(f"{name} ("))
        opts = out.splitlines()[out.splitlines().index(line) + 1]
        assert opts.strip() == "options: " + (
            ", ".join(f.name for f in dataclasses.fields(cls)) or "none")
    assert f"halve (plugin {__name__}): Scale every weight by `factor`" in out
    assert main(["passes", "halve"]) == 0
    one = capsys.readouterr().out
    assert "Nothing else." in one and "factor" in one and "0.5" in one
    assert main(["passes", "nm-prune"]) == 0
    one = capsys.readouterr().out
    assert all(f.name in one for f in dataclasses.fields(registry.get_pass("nm-prune")))
    assert main(["passes", "broken"]) == 2
    assert "no_such_module_xyz" in capsys.readouterr().err


def test_inspect_shows_manifest_pipeline_machine_reports_sizes(tmp_path, capsys):
    save_example("mlp", tmp_path / "mlp.pt2")
    fcim = tmp_path / "m.fcim"
    assert main(["compile", str(tmp_path / "mlp.pt2"), "--nm", "2:4", "-o", str(fcim),
                 "-q"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(fcim)]) == 0
    out = capsys.readouterr().out
    with zipfile.ZipFile(fcim) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        compressed = sum(i.compress_size for i in zf.infolist())
    info = manifest["compile"]
    assert f"pipeline: {info['pipeline']}" in out
    assert machine_entry(manifest["machine"])["hash"] in out
    assert f"format {manifest['format_version']}, ISA version {manifest['isa_version']}" in out
    for name in info["reports"]:
        assert f"  {name}: " in out
    assert "fc1        gemm   2:4   784   512        200,704" in out  # 784 x 512 at 2:4
    sizes = out.splitlines()[-1]
    assert f"file {fcim.stat().st_size:,}" in sizes
    parts = [int(x.replace(",", "")) for x in re.findall(r"payload ([\d,]+)|other ([\d,]+)", sizes)
             for x in x if x]
    assert len(parts) == 3 and sum(parts) == compressed  # every member in one category
