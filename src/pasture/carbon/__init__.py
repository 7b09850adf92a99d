"""Energy and carbon footprint of training, the paper's §6 and Table 15."""

from .footprint import (
    PAPER_PROJECT,
    PAPER_TABLE15,
    CarbonConfig,
    EnergyMeter,
    Footprint,
    PaperRow,
    project_total,
    record_session,
    report,
    table15,
    to_markdown,
    write_run_report,
)

__all__ = [
    "PAPER_PROJECT",
    "PAPER_TABLE15",
    "CarbonConfig",
    "EnergyMeter",
    "Footprint",
    "PaperRow",
    "project_total",
    "record_session",
    "report",
    "table15",
    "to_markdown",
    "write_run_report",
]
