"""What `sightline data audit` finds: one `Finding` per problem and the `AuditResult` around them. Shared by the
checks (audit.py) and the HTML page (audit_report.py), so neither of those imports the other's module for its
types; the finding kinds are listed in audit.py."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from sightline.data.inputs import shown_name

__all__ = ["Finding", "AuditResult"]


@dataclass
class Finding:
    kind: str
    paths: list[str]
    detail: dict = field(default_factory=dict)


@dataclass
class AuditResult:
    root: Path
    n_images: int
    findings: list[Finding]
    counts: dict[str, int]  # {kind: number of findings}
    class_counts: dict[str, int]
    out: Path | None = None  # folder with audit.json and audit.html
    quarantined: list[dict] = field(default_factory=list)
    not_quarantined: list[dict] = field(default_factory=list)  # {path, kind, reason}: flagged, asked to move, stayed
    label_check: dict | None = None  # LabelCheck.summary() when the label check was asked for, else None

    def to_json(self) -> dict:
        return {
            "root": shown_name(self.root),  # a folder named in Latin-1 has no UTF-8 text; its bytes are escaped
            "n_images": self.n_images,
            "counts": self.counts,
            "class_counts": self.class_counts,
            "findings": [asdict(f) for f in self.findings],
            "quarantined": self.quarantined,
            "not_quarantined": self.not_quarantined,
            "label_check": self.label_check,
        }
