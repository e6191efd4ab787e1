"""One severity scale for vulnerability findings: what scan reports and what `--fail-on`/`scan.fail_on` take."""

from __future__ import annotations

from typing import Literal

Severity = Literal["unknown", "negligible", "low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = ("unknown", "negligible", "low", "medium", "high", "critical")
FailOn = Literal["negligible", "low", "medium", "high", "critical"]  # "unknown" is no threshold


def at_least(severity: Severity, threshold: Severity) -> bool:
    return SEVERITIES.index(severity) >= SEVERITIES.index(threshold)
