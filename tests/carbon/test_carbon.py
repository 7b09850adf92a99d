"""The paper's §6 arithmetic: Table 15 recomputed to its printed integers, the meter, the CLI."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest

from pasture.carbon import (
    PAPER_TABLE15,
    EnergyMeter,
    Footprint,
    project_total,
    table15,
    to_markdown,
)
from pasture.cli import main
from pasture.errors import PastureError


def test_llama_7b_by_hand() -> None:
    fp = Footprint(gpu_hours=82_432, power_watts=400)
    assert fp.energy_mwh == pytest.approx(36.27008)  # 82,432 h × 0.4 kW × 1.1
    assert fp.tco2eq == pytest.approx(13.9639808)  # × 0.385


def test_table15_reproduces_every_printed_integer() -> None:
    rows = table15()
    assert [r["model"] for r in rows] == [r.model for r in PAPER_TABLE15]
    for row in rows:
        assert (row["mwh"], row["tco2eq"]) == (row["paper_mwh"], row["paper_tco2eq"]), row


def test_table15_exact_gpu_hours_off_by_one_mwh_in_two_rows() -> None:
    # The documented inconsistency: from exact GPU-hours every tCO2eq matches, but two MWh don't.
    rows = table15(sig_figs=None)
    assert all(r["tco2eq"] == r["paper_tco2eq"] for r in rows)
    off = {r["model"]: r["mwh"] - r["paper_mwh"] for r in rows if r["mwh"] != r["paper_mwh"]}
    assert off == {"BLOOM-175B": 1, "LLaMA-65B": 1}


def test_project_total_one_above_the_paper() -> None:
    total = project_total()
    assert total["carbon_tco2eq"] == pytest.approx(1015.63)  # 2,638 MWh × 0.385
    assert (total["tco2eq"], total["paper_tco2eq"]) == (1016, 1015)
    # An unrounded energy in [2637.50, 2637.66) MWh gives both printed numbers.
    for mwh in (2637.5, 2637.6):
        fp = Footprint.from_energy(mwh, pue=1.0)
        assert (round(fp.energy_mwh), round(fp.tco2eq)) == (2638, 1015)


def test_markdown_has_the_rows() -> None:
    text = to_markdown(table15())
    assert "| LLaMA-7B | A100-80GB | 400W | 82,432 | 36 MWh | 14 |" in text
    assert "| LLaMA-65B | A100-80GB | 400W | 1,022,362 | 449 MWh | 173 |" in text
    assert text.count("\n") == len(PAPER_TABLE15) + 1
    assert to_markdown([r._asdict() for r in PAPER_TABLE15]) == text


def test_from_energy_applies_pue() -> None:
    fp = Footprint.from_energy(1.2, gpu_hours=3000)
    assert fp.energy_mwh == pytest.approx(1.32)
    assert fp.power_watts == pytest.approx(400)
    assert fp.method == "measured"


@pytest.mark.parametrize(
    "kwargs", [{"gpu_hours": -1}, {"pue": 0.9}, {"power_watts": float("nan")}, {"pue": "1.1"}]
)
def test_footprint_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(PastureError):
        Footprint(**{"gpu_hours": 1.0, "power_watts": 400.0, **kwargs})


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_meter_estimate_arithmetic() -> None:
    clock = FakeClock()
    meter = EnergyMeter(power_watts=400, devices=2, clock=clock, use_nvml=False).start()
    clock.now += 1.5 * 3600
    fp = meter.stop()
    assert fp.method == "estimate"
    assert fp.gpu_hours == pytest.approx(3.0)  # 2 devices × 1.5 h
    assert fp.energy_mwh == pytest.approx(1.32e-3)  # 3 GPU-h × 400 W × 1.1 = 1.32 kWh
    assert fp.tco2eq == pytest.approx(1.32e-3 * 0.385)


def test_meter_context_and_errors() -> None:
    clock = FakeClock()
    with EnergyMeter(clock=clock, use_nvml=False) as meter:
        clock.now += 3600
    assert meter.footprint.gpu_hours == pytest.approx(1.0)
    with pytest.raises(PastureError, match="before start"):
        meter.stop()
    with pytest.raises(PastureError):
        EnergyMeter(devices=0)


def test_meter_default_runs_here() -> None:
    fp = EnergyMeter().start().stop()  # NVML on a GPU machine with nvidia-ml-py, else estimate
    assert fp.method in {"nvml", "estimate"}
    assert fp.energy_mwh >= 0


def _fake_nvml(energies_mj: list[int]) -> SimpleNamespace:
    """Just enough of pynvml's API: each read of a counter adds its device's energy step."""
    counters = [0] * len(energies_mj)

    def read(handle: int) -> int:
        counters[handle] += energies_mj[handle]
        return counters[handle]

    return SimpleNamespace(
        NVMLError=RuntimeError,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: len(energies_mj),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetTotalEnergyConsumption=read,
    )


def test_meter_nvml_sums_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([3_600_000_000, 7_200_000_000, 1]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    clock = FakeClock()
    meter = EnergyMeter(clock=clock).start()
    clock.now += 3600
    fp = meter.stop()
    assert fp.method == "nvml"
    assert fp.gpu_hours == pytest.approx(2.0)
    assert fp.gpu_energy_mwh == pytest.approx(3e-3)  # 1 kWh + 2 kWh, in mJ: 3.6e9 + 7.2e9
    assert fp.energy_mwh == pytest.approx(3.3e-3)


def test_cli_one_run(capsys: pytest.CaptureFixture) -> None:
    assert main(["carbon", "--gpu-hours", "82432", "--power", "400"]) == 0
    out = capsys.readouterr().out
    assert "36.27 MWh" in out and "13.96 tCO2eq" in out
    assert main(["carbon", "--gpu-hours", "1000", "--power", "400", "--pue", "1.0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["energy_mwh"] == pytest.approx(0.4)
    assert data["tco2eq"] == pytest.approx(0.154)


def test_cli_prints_gpu_hours_as_written_and_defaults_to_the_papers_400_watts(
    capsys: pytest.CaptureFixture,
) -> None:
    assert main(["carbon", "--gpu-hours", "1022362", "--power", "400"]) == 0
    given = capsys.readouterr().out
    assert "(1,022,362 GPU-h × 400 W × PUE 1.1)" in given and "e+06" not in given
    assert "449.84 MWh" in given  # LLaMA-65B, Table 15 (printed 449: see the module docstring)
    assert main(["carbon", "--gpu-hours", "1022362"]) == 0
    default = capsys.readouterr().out
    assert default.splitlines()[:2] == given.splitlines()  # the same energy and tCO2eq
    assert default.splitlines()[2].startswith("power   400 W per GPU, the default: the paper's")
    assert main(["carbon", "--gpu-hours", "1234.5", "--power", "250.25"]) == 0
    assert "(1,234.5 GPU-h × 250.25 W" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["carbon", "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "default 400: the paper's figure for an A100-80GB" in help_text


def test_cli_table15(capsys: pytest.CaptureFixture) -> None:
    assert main(["carbon", "--table15"]) == 0
    out = capsys.readouterr().out
    assert "| BLOOM-175B | A100-80GB | 400W | 1,082,880 | 475 MWh | 183 |" in out
    assert "2,638 MWh" in out and "1,016 tCO2eq (paper: 1,015)" in out
    assert main(["carbon", "--table15", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["tco2eq"] for r in data["rows"]] == [137, 183, 14, 23, 90, 173]
    assert data["project"]["tco2eq"] == 1016


@pytest.mark.parametrize(
    "argv",
    [
        ["--gpu-hours", "-5", "--power", "400"],
        ["--gpu-hours", "10", "--power", "400", "--pue", "0.9"],
        ["--gpu-hours", "ten", "--power", "400"],
        ["--power", "400"],
        ["--table15", "--power", "400"],
        ["--table15", "--intensity", "-1"],
        ["--frobnicate"],
        [],
    ],
)
def test_cli_errors(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    assert main(["carbon", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pasture: error: "), captured.err
