"""Energy and carbon footprint of training, the paper's §6 and Table 15."""

from .footprint import (
    PAPER_PROJECT,
    PAPER_TABLE15,
    EnergyMeter,
    Footprint,
    PaperRow,
    carbon_main,
    project_total,
    table15,
    to_markdown,
)

__all__ = [
    "PAPER_PROJECT",
    "PAPER_TABLE15",
    "EnergyMeter",
    "Footprint",
    "PaperRow",
    "carbon_main",
    "project_total",
    "table15",
    "to_markdown",
]
