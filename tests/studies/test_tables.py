"""The one table renderer: per-block grouping, units, no markup surprises."""

from __future__ import annotations

from flowc.studies.results import CostReport, CostResult, LayerRow, machine_entry
from flowc.studies.tables import block_of, grouped, render_run
from flowc.termtable import table


def _layers() -> list[LayerRow]:
    names = ["model.embed_tokens", "model.layers.0.self_attn.q_proj", "model.layers.0.mlp",
             "model.layers.1.self_attn.q_proj", "model.layers.1.mlp", "model.norm", "lm_head"]
    return [LayerRow(n, "gemm" if "proj" in n or n == "lm_head" else "vector",
                     "2:4" if "proj" in n else "-", 1000 * i, 10 * (i + 1), 1e6 * (i + 1))
            for i, n in enumerate(names)]


def test_blocks_are_name_prefixes_up_to_the_first_number():
    assert block_of("model.layers.12.mlp.up_proj") == "model.layers.12"
    assert block_of("lm_head") == "lm_head" and block_of("0") == "0"
    rows = grouped(_layers())
    assert [r[0] for r in rows] == ["model.embed_tokens", "model.layers.0", "model.layers.1",
                                    "model.norm", "lm_head"]
    assert rows[1][1:] == ("2:4", 2, 1000 + 2000, 20 + 30, 2e6 + 3e6)


def test_run_table_summary_and_layers_share_totals_and_units():
    layers = _layers()
    cyc = sum(lay.cycles for lay in layers)
    res = CostResult("m", cyc, cyc / 500e6, sum(lay.energy for lay in layers),
                     sum(lay.macs for lay in layers), 0, 0.0, layers)
    machine = {"name": "m", "clock_mhz": 500.0, "macros": 1, "patterns": ["2:4"]}
    report = CostReport("run", "x", "quantize", {"m": machine_entry(machine)}, [res])
    summary, every = render_run(report), render_run(report, layers=True)
    body = [line for line in summary.splitlines() if line.startswith(" model.")]
    assert len(body) == 4  # embed, two blocks, norm: one row each
    assert "energy uJ" in summary and "energy uJ" in every
    total = next(ln for ln in summary.splitlines() if ln.strip().startswith("total"))
    assert f"{cyc:,}" in total and "7" in total.split()  # 7 layers in the footer
    assert len([ln for ln in every.splitlines() if ln.startswith(" model.")]) == 6
    assert "latency 0.56 us" in summary  # 280 cycles at 500 MHz
    assert "energy 28 uJ" in summary  # 28e6 pJ


def test_brackets_in_names_are_text_not_markup():
    out = table(["layer", "cycles"], [("blocks[0].fc", 5)], title="[title]")
    assert "blocks[0].fc" in out and out.splitlines()[0] == "[title]"
