"""Carbon footprint of training, as in the paper's §6 and Table 15.

    Wh     = GPU-h × (GPU power consumption) × PUE        PUE = 1.1
    tCO2eq = MWh × 0.385                                  US national average, kg/kWh = t/MWh

Run it (one CPU is enough; nothing here needs a GPU):

    pasture carbon --gpu-hours 82432 --power 400          # LLaMA-7B: 36.27 MWh, 13.96 tCO2eq
    pasture carbon --gpu-hours 82432                      # the same: 400 W is the default
    pasture carbon --table15                              # the paper's Table 15, recomputed
    pasture carbon --table15 --json

Measure a job while it runs (NVML energy counters when a GPU and ``nvidia-ml-py`` are there,
else elapsed hours × devices × configured power):

    meter = EnergyMeter(power_watts=400).start()
    train()
    print(meter.stop().to_dict())

How the paper rounds (worked out from its numbers; the paper does not say):

* From the exact GPU-hours, every tCO2eq rounds to the printed integer, and four of six MWh
  do; BLOOM-175B (476.47 → paper 475) and LLaMA-65B (449.84 → paper 449) come out one higher.
* Rounding GPU-hours to three significant figures first (1.08M, 1.02M, 809K, 82.4K, 135K,
  530K), then rounding MWh and tCO2eq to the nearest integer, reproduces all twelve printed
  integers. No other precision does. ``table15`` uses this rule by default (``sig_figs=3``);
  no value lands on .5, so half-up and half-even agree.
* The whole-project line (2,638 MWh → 1,015 tCO2eq) cannot come from the printed 2,638:
  2,638 × 0.385 = 1,015.63, which rounds to 1,016. Flooring gives 1,015 but breaks LLaMA-7B,
  13B and 33B (13.96 → 13). The pair is consistent with an unrounded energy between
  2,637.50 and 2,637.66 MWh, rounded once for each printed number. We print 1,016 and say so.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

from .. import files
from ..errors import PastureError

PUE = 1.1
CARBON_INTENSITY = 0.385  # kg CO2eq/kWh = t CO2eq/MWh, US national average
A100_POWER_WATTS = 400.0  # the paper's figure for an A100-80GB (its TDP)


@dataclass
class CarbonConfig:
    """``[carbon]`` of a training config: NVML where a GPU is visible, else hours × devices ×
    ``power_watts``; then × ``pue`` and × ``carbon_intensity`` (paper §6)."""

    power_watts: float = A100_POWER_WATTS  # per device, when not measured
    pue: float = PUE
    carbon_intensity: float = CARBON_INTENSITY  # tCO2eq per MWh (US average; set your region's)

    def __post_init__(self) -> None:
        for name, low in (("power_watts", 0.0), ("pue", 1.0), ("carbon_intensity", 0.0)):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= low) or (name == "power_watts" and not value):
                rule = "above 0" if name == "power_watts" else f"{low} or more"
                raise PastureError(f"carbon.{name} = {value!r}: must be a finite number {rule}")

    def meter(self, devices: int | None) -> EnergyMeter:
        """A meter with these settings (``devices``: None counts the visible GPUs by NVML)."""
        return EnergyMeter(self.power_watts, devices, self.pue, self.carbon_intensity)


@dataclass(frozen=True)
class Footprint:
    """Energy and emissions of ``gpu_hours`` at ``power_watts`` per GPU, or of measured energy.

    ``gpu_energy_mwh``, when set (see ``from_energy``), is what the GPUs drew; it replaces
    ``gpu_hours × power_watts``. PUE then adds the data center's overhead either way.
    """

    gpu_hours: float
    power_watts: float
    pue: float = PUE
    carbon_intensity: float = CARBON_INTENSITY
    gpu_energy_mwh: float | None = None
    method: str = "estimate"

    def __post_init__(self) -> None:
        _check("GPU-hours", self.gpu_hours, "pass a number of hours ≥ 0")
        _check("GPU power", self.power_watts, "pass watts per GPU ≥ 0, e.g. 400 for an A100")
        _check("PUE", self.pue, "PUE is facility energy / IT energy, so ≥ 1 (the paper: 1.1)")
        if self.pue < 1:
            raise PastureError(f"PUE {self.pue} is below 1: PUE is facility / IT energy, ≥ 1")
        _check("carbon intensity", self.carbon_intensity, "pass t CO2eq per MWh (paper: 0.385)")
        if self.gpu_energy_mwh is not None:
            _check("measured energy", self.gpu_energy_mwh, "pass MWh ≥ 0")

    @classmethod
    def from_energy(
        cls,
        gpu_mwh: float,
        gpu_hours: float = 0.0,
        pue: float = PUE,
        carbon_intensity: float = CARBON_INTENSITY,
        method: str = "measured",
    ) -> Footprint:
        """A footprint from energy the GPUs drew (e.g. NVML's counters), before PUE."""
        power = gpu_mwh * 1e6 / gpu_hours if gpu_hours > 0 else 0.0  # average W per GPU
        return cls(gpu_hours, power, pue, carbon_intensity, gpu_mwh, method)

    @property
    def energy_mwh(self) -> float:
        """Facility energy: GPU energy × PUE."""
        gpu_mwh = self.gpu_energy_mwh
        if gpu_mwh is None:
            gpu_mwh = self.gpu_hours * self.power_watts / 1e6
        return gpu_mwh * self.pue

    @property
    def tco2eq(self) -> float:
        return self.energy_mwh * self.carbon_intensity

    def to_dict(self) -> dict:
        return {**asdict(self), "energy_mwh": self.energy_mwh, "tco2eq": self.tco2eq}


def _check(name: str, value: float, fix: str) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise PastureError(f"{name} {value!r} is not a finite number ≥ 0: {fix}")


class PaperRow(NamedTuple):
    """One row of Table 15, as printed."""

    model: str
    gpu: str
    power_watts: int
    gpu_hours: int
    mwh: int
    tco2eq: int


PAPER_TABLE15 = (
    PaperRow("OPT-175B", "A100-80GB", 400, 809_472, 356, 137),
    PaperRow("BLOOM-175B", "A100-80GB", 400, 1_082_880, 475, 183),
    PaperRow("LLaMA-7B", "A100-80GB", 400, 82_432, 36, 14),
    PaperRow("LLaMA-13B", "A100-80GB", 400, 135_168, 59, 23),
    PaperRow("LLaMA-33B", "A100-80GB", 400, 530_432, 233, 90),
    PaperRow("LLaMA-65B", "A100-80GB", 400, 1_022_362, 449, 173),
)

# §6: "2048 A100-80GB for a period of approximately 5 months ... 2,638 MWh ... 1,015 tCO2eq"
PAPER_PROJECT = {"gpus": 2048, "gpu": "A100-80GB", "months": 5, "mwh": 2638, "tco2eq": 1015}


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def round_sig(x: float, digits: int) -> float:
    """``x`` to ``digits`` significant figures: round_sig(1_022_362, 3) == 1_020_000."""
    return float(f"{x:.{digits}g}")


def table15(
    rows: Sequence[PaperRow] | None = None,
    pue: float = PUE,
    intensity: float = CARBON_INTENSITY,
    sig_figs: int | None = 3,
) -> list[dict]:
    """Recompute Table 15. ``mwh``/``tco2eq`` are the printed integers, computed from GPU-hours
    rounded to ``sig_figs`` significant figures (None: exact), the rule that reproduces the paper;
    ``energy_mwh``/``carbon_tco2eq`` are the exact values; ``paper_*`` what the paper printed."""
    out = []
    for row in PAPER_TABLE15 if rows is None else rows:
        exact = Footprint(row.gpu_hours, row.power_watts, pue, intensity)
        hours = row.gpu_hours if sig_figs is None else round_sig(row.gpu_hours, sig_figs)
        printed = Footprint(hours, row.power_watts, pue, intensity)
        out.append(
            {
                "model": row.model,
                "gpu": row.gpu,
                "power_watts": row.power_watts,
                "gpu_hours": row.gpu_hours,
                "mwh": round_half_up(printed.energy_mwh),
                "tco2eq": round_half_up(printed.tco2eq),
                "energy_mwh": exact.energy_mwh,
                "carbon_tco2eq": exact.tco2eq,
                "paper_mwh": row.mwh,
                "paper_tco2eq": row.tco2eq,
            }
        )
    return out


def project_total(intensity: float = CARBON_INTENSITY) -> dict:
    """The whole-project line from the printed 2,638 MWh (gives 1,016; the paper prints 1,015)."""
    tco2 = PAPER_PROJECT["mwh"] * intensity
    return {
        **PAPER_PROJECT,
        "carbon_tco2eq": tco2,
        "tco2eq": round_half_up(tco2),
        "paper_tco2eq": PAPER_PROJECT["tco2eq"],
    }


def to_markdown(rows: Sequence[dict]) -> str:
    """Rows (from ``table15`` or ``PaperRow._asdict()``) as the paper lays out Table 15."""
    lines = [
        "| | GPU Type | GPU Power consumption | GPU-hours | Total power consumption "
        "| Carbon emitted (tCO2eq) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['gpu']} | {r['power_watts']:g}W | {r['gpu_hours']:,} "
            f"| {r['mwh']:,} MWh | {r['tco2eq']:,} |"
        )
    return "\n".join(lines)


class EnergyMeter:
    """GPU energy of a running job, from ``start()`` to ``stop()``.

    With ``nvidia-ml-py`` and a GPU: the difference of NVML's total-energy counters (mJ) over
    the visible GPUs (``CUDA_VISIBLE_DEVICES`` honoured; ``devices`` keeps the first n).
    Otherwise: elapsed hours × ``devices`` (default 1) × ``power_watts``, as the paper estimates.
    ``reason`` says why NVML was not used. NVML counts everything on a GPU, not only this job.
    """

    def __init__(
        self,
        power_watts: float = A100_POWER_WATTS,
        devices: int | None = None,
        pue: float = PUE,
        carbon_intensity: float = CARBON_INTENSITY,
        clock: Callable[[], float] = time.monotonic,
        use_nvml: bool = True,
    ) -> None:
        if devices is not None and devices < 1:
            raise PastureError(f"devices={devices}: pass at least 1 GPU (or None for all visible)")
        Footprint(0.0, power_watts, pue, carbon_intensity)  # validates the settings now
        self.power_watts, self.devices = power_watts, devices
        self.pue, self.carbon_intensity = pue, carbon_intensity
        self.clock, self.use_nvml = clock, use_nvml
        self.method, self.reason = "estimate", "not started"
        self._nvml = None
        self._handles: list = []
        self._start_mj: list[int] = []
        self._start_s: float | None = None
        self.footprint: Footprint | None = None  # set on leaving a ``with`` block

    def start(self) -> EnergyMeter:
        self.method, self.reason = "estimate", "use_nvml=False"
        if self.use_nvml:
            self._start_nvml()
        self._start_s = self.clock()
        return self

    def stop(self) -> Footprint:
        if self._start_s is None:
            raise PastureError("EnergyMeter.stop() before start(): call start() first")
        hours = max(self.clock() - self._start_s, 0.0) / 3600
        self._start_s = None
        if self.method == "nvml":
            try:
                mj = sum(
                    self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) - s
                    for h, s in zip(self._handles, self._start_mj, strict=True)
                )
            finally:
                self._nvml.nvmlShutdown()
            return Footprint.from_energy(
                mj / 3.6e12,  # mJ → MWh
                hours * len(self._handles),
                self.pue,
                self.carbon_intensity,
                method="nvml",
            )
        gpu_hours = hours * (self.devices or 1)
        return Footprint(gpu_hours, self.power_watts, self.pue, self.carbon_intensity)

    def __enter__(self) -> EnergyMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.footprint = self.stop()

    def _start_nvml(self) -> None:
        try:
            import pynvml  # nvidia-ml-py; optional
        except ImportError:
            self.reason = "pynvml not installed (pip install nvidia-ml-py)"
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            self.reason = f"NVML unavailable: {e}"
            return
        try:
            handles = _visible_handles(pynvml)[: self.devices]
            if not handles:
                raise PastureError("no visible GPU")
            start_mj = [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles]
        except (pynvml.NVMLError, PastureError) as e:  # e.g. pre-Volta GPUs, MIG instances
            pynvml.nvmlShutdown()
            self.reason = f"NVML energy counters unavailable: {e}"
            return
        self._nvml, self._handles, self._start_mj = pynvml, handles, start_mj
        self.method, self.reason = "nvml", ""


def _visible_handles(pynvml) -> list:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    handles = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.isdigit():
            handles.append(pynvml.nvmlDeviceGetHandleByIndex(int(entry)))
        elif entry.startswith("GPU-"):
            handles.append(pynvml.nvmlDeviceGetHandleByUUID(entry))
        elif entry.startswith("MIG-"):
            raise PastureError("MIG instance: NVML counts energy per physical GPU only")
        else:
            break  # CUDA stops at the first invalid entry, e.g. "-1"
    return handles


def plain(value: float) -> str:
    """A number as a person writes it: 1,022,362 and 1,234.5, never 1.02236e+06."""
    from decimal import Decimal

    return format(Decimal(repr(float(value))).normalize(), ",f")


def report(
    gpu_hours: float | None = None,
    power: float | None = None,
    pue: float = PUE,
    intensity: float = CARBON_INTENSITY,
    paper_table: bool = False,
    as_json: bool = False,
) -> None:
    """Print what ``pasture carbon`` asks for (its options, one for one); PastureError on bad
    values."""
    if paper_table:
        if gpu_hours is not None or power is not None:
            raise PastureError("--table15 takes no --gpu-hours/--power: pass one or the other")
        Footprint(0.0, 0.0, pue, intensity)  # validates --pue and --intensity
        rows, total = table15(pue=pue, intensity=intensity), project_total(intensity)
        if as_json:
            print(json.dumps({"rows": rows, "project": total}, indent=2))
            return
        print(to_markdown(rows))
        print(
            f"\nWhole project ({total['gpus']:,} {total['gpu']}, ~{total['months']} months): "
            f"{total['mwh']:,} MWh × {intensity} = {total['carbon_tco2eq']:,.2f} → "
            f"{total['tco2eq']:,} tCO2eq (paper: {total['paper_tco2eq']:,})"
        )
        return
    if gpu_hours is None:
        raise PastureError("pass --gpu-hours H [--power W] (or --table15)")
    watts = A100_POWER_WATTS if power is None else power
    fp = Footprint(gpu_hours, watts, pue, intensity)
    if as_json:
        print(json.dumps(fp.to_dict(), indent=2))
        return
    print(
        f"energy  {fp.energy_mwh:,.2f} MWh  ({plain(fp.gpu_hours)} GPU-h × "
        f"{plain(fp.power_watts)} W × PUE {fp.pue:g})"
    )
    print(f"carbon  {fp.tco2eq:,.2f} tCO2eq  (× {fp.carbon_intensity:g} tCO2eq/MWh)")
    if power is None:
        print(
            f"power   {plain(watts)} W per GPU, the default: the paper's figure for an "
            "A100-80GB (--power W for other GPUs)"
        )


# -- a training run's footprint ----------------------------------------------------------------


def record_session(run_dir: Path, steps: tuple[int, int], footprint: Footprint) -> None:
    """Append one session's footprint to ``RUN/carbon.jsonl`` (a resumed run adds a line)."""
    with (run_dir / "carbon.jsonl").open("a") as f:
        f.write(json.dumps({"steps": list(steps), **footprint.to_dict()}) + "\n")


def write_run_report(run_dir: Path, model: str, hardware: str, cfg: CarbonConfig) -> Path:
    """``RUN/carbon.md``: the paper's Table 15 with this run's row (all sessions) added."""
    lines = (run_dir / "carbon.jsonl").read_text().splitlines()
    sessions = [json.loads(line) for line in lines]
    row = {
        "model": f"{model} ({run_dir.name}, this run)",
        "gpu": hardware,
        "power_watts": cfg.power_watts,
        "gpu_hours": round(sum(s["gpu_hours"] for s in sessions), 4),
        "mwh": round(sum(s["energy_mwh"] for s in sessions), 6),
        "tco2eq": round(sum(s["tco2eq"] for s in sessions), 6),
    }
    rows = [paper._asdict() for paper in PAPER_TABLE15] + [row]
    path = run_dir / "carbon.md"
    files.write_text(
        path,
        f"# Carbon footprint (paper §6, Table 15 form)\n\nPUE {cfg.pue}, "
        f"{cfg.carbon_intensity} tCO2eq/MWh; this run's energy: {sessions[-1]['method']}.\n\n"
        + to_markdown(rows)
        + "\n",
    )
    return path
