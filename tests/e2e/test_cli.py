"""End-to-end through the CLI: compile, run, check, and every bad input as one clear line."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from flowc.cli.flowrun import main as flowrun_main
from flowc.cli.main import main
from flowc.studies.examples import save_example


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    save_example("mlp", d / "mlp.pt2")
    return d


def compile_run(work: Path, nm: str | None) -> dict:
    tag = (nm or "dense").replace(":", "_")
    fcim, rep = work / f"mlp_{tag}.fcim", work / f"mlp_{tag}.json"
    args = ["compile", str(work / "mlp.pt2"), "-o", str(fcim), "-q"] + (["--nm", nm] if nm else [])
    assert main(args) == 0
    assert flowrun_main([str(fcim), "--json", str(rep), "-q"]) == 0
    return json.loads(rep.read_text())


def test_mlp_sparsity_lowers_cycles_and_passes_the_check(work):
    dense, r24, r18 = (compile_run(work, nm) for nm in (None, "2:4", "1:8"))
    for rep in (dense, r24, r18):
        check = rep["check"]
        assert check["passed"] is True and check["reference"] == "onnxruntime"
        # the verdict: ORT applying the same int8 quantisation (here bit-equal: no float op
        # between the int8 GEMMs but ReLU); the fidelity: int8 vs the fp32 model, not bit-equal
        assert check["reference_model"] == "int8" and check["cosine"] >= 0.9999
        assert check["max_abs_error"] <= 1e-4 * check["outputs"][0]["max_abs_reference"]
        fid = check["fidelity"]
        assert fid["passed"] and fid["reference_model"] == "fp32" and fid["max_abs_error"] > 0
        assert {"name", "pattern", "cycles", "energy"} <= set(rep["results"][0]["layers"][0])
        assert rep["units"]["energy"] == "pJ" and rep["kind"] == "run"
    dense, r24, r18 = (rep["results"][0] for rep in (dense, r24, r18))
    assert [lyr["pattern"] for lyr in r18["layers"] if lyr["kind"] == "gemm"] == ["1:8"] * 3
    assert r18["cycles"] < r24["cycles"] < dense["cycles"]
    assert r18["energy"] < dense["energy"]


def test_compiling_twice_is_byte_identical(work):
    outs = []
    for i in range(2):
        out = work / f"det{i}.fcim"
        assert main(["compile", str(work / "mlp.pt2"), "--nm", "2:4", "-o", str(out), "-q"]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_disasm_prints_the_program(work, capsys):
    compile_run(work, "2:4")
    assert main(["disasm", str(work / "mlp_2_4.fcim")]) == 0
    text = capsys.readouterr().out
    assert "cfg.nm macro=0 n=2 m=4" in text and text.rstrip().endswith("halt")


def expect_one_line_error(capsys, code, rc, pattern):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == code, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert pattern in err[0], err[0]


def test_malformed_assembly_reports_file_line_col(work, capsys):
    src = work / "bad.s"
    src.write_text("layer name=a kind=gemm\ncfg.nm macro=0 n=2 q=4\nhalt\n")
    rc = main(["asm", str(src), "-o", str(work / "bad.bin")])
    expect_one_line_error(capsys, 4, rc, f"{src}:2:")
    assert not (work / "bad.bin").exists()


def test_truncated_and_tampered_fcim(work, capsys):
    compile_run(work, "2:4")
    good = (work / "mlp_2_4.fcim").read_bytes()
    trunc = work / "trunc.fcim"
    trunc.write_bytes(good[: len(good) // 2])
    expect_one_line_error(capsys, 4, flowrun_main([str(trunc)]), "truncated")
    tampered = work / "tampered.fcim"
    with zipfile.ZipFile(work / "mlp_2_4.fcim") as zin, zipfile.ZipFile(tampered, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "tensors/fc1.scale.npy":
                data = data[:-4] + b"\x00\x00\x80\x3f"
            zout.writestr(item, data)
    expect_one_line_error(capsys, 4, flowrun_main([str(tampered)]),
                          "checksum mismatch in tensors/fc1.scale.npy")


def test_unsupported_op_names_op_and_node(work, capsys):
    class Odd(torch.nn.Module):  # a Bessel function: no lowering rule, inside a submodule
        def forward(self, x):
            return torch.special.bessel_j0(x)

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), Odd())
    ep = torch.export.export(model, (torch.randn(2, 8),))
    torch.export.save(ep, str(work / "odd.pt2"))
    out = work / "odd.fcim"
    rc = main(["compile", str(work / "odd.pt2"), "-o", str(out), "-q"])
    expect_one_line_error(capsys, 3, rc, "unsupported op aten.special_bessel_j0.default at "
                          "node 'special_bessel_j0' in module '1'")
    assert not out.exists()


def test_pickled_module_needs_trust_flag(work, capsys):
    from flowc.studies.examples import build

    model, _ = build("mlp")
    torch.save(model, work / "pickled.pt")
    out = work / "pickled.fcim"
    rc = main(["compile", str(work / "pickled.pt"), "-o", str(out), "--input-shape", "8x784", "-q"])
    expect_one_line_error(capsys, 2, rc, "unpickling runs arbitrary code")
    assert not out.exists()
    assert main(["compile", str(work / "pickled.pt"), "-o", str(out), "--input-shape", "8x784",
                 "--trust-pickle", "-q"]) == 0
    assert flowrun_main([str(out), "-q"]) == 0


def test_torchscript_model_compiles(work):
    from flowc.studies.examples import build

    model, inputs = build("mlp")
    torch.jit.trace(model, inputs).save(str(work / "ts.pt"))
    out = work / "ts.fcim"
    assert main(["compile", str(work / "ts.pt"), "-o", str(out), "--input-shape", "8x784",
                 "--nm", "2:4", "-q"]) == 0
    assert flowrun_main([str(out), "-q"]) == 0


def test_wrong_input_shape_to_flowrun(work, capsys):
    import numpy as np

    compile_run(work, "2:4")
    bad = work / "bad_input.npy"
    np.save(bad, np.zeros((3, 784), np.float32))
    report = work / "bad.json"
    rc = flowrun_main([str(work / "mlp_2_4.fcim"), "--input", str(bad), "--json", str(report)])
    expect_one_line_error(capsys, 2, rc, "input x: expected shape 8x784, got 3x784")
    assert not report.exists()


def test_console_script_exit_code_and_debug_traceback(work):
    missing = str(work / "missing.fcim")
    r = subprocess.run([sys.executable, "-m", "flowc.cli.flowrun", missing], capture_output=True,
                       text=True)
    # a missing file is bad input (2, docs/cli.md), not a bad program (4)
    assert r.returncode == 2 and r.stderr.strip() == f"flowrun: error: {missing}: no such .fcim file"
    r = subprocess.run([sys.executable, "-m", "flowc.cli.flowrun", missing, "--debug"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_bad_machine_file_names_the_field_path(work, capsys):
    typo = work / "typo.toml"
    typo.write_text('extends = "flexcim"\n[macro]\nrowz = 32\n')
    out = work / "m.fcim"
    rc = main(["compile", str(work / "mlp.pt2"), "--machine", str(typo), "-o", str(out), "-q"])
    expect_one_line_error(capsys, 2, rc, "macro.rowz: unknown key (did you mean 'rows'?)")
    energy = work / "energy.toml"
    energy.write_text('extends = "flexcim"\n[energy]\nfoo = { pj = 1.0, unit = "bit", estimate = true }\n')
    rc = main(["compile", str(work / "mlp.pt2"), "--machine", str(energy), "-o", str(out), "-q"])
    expect_one_line_error(capsys, 2, rc, "energy.foo: unknown energy action 'foo'")
    assert not out.exists()
