"""The promotion rule (`promotion:` in sightline.yaml, sightline.spec.Promotion) applied to a paired comparison:
promote the challenger, or not, and why. Pure: comparisons in (sightline.loop.paired.compare_split), plain data out.

The three checks, each on the point estimates (the intervals are reported beside them):
- frozen test: accuracy(challenger) - accuracy(champion) >= -max_test_drop;
- every class with images in the frozen test: recall change >= -max_class_recall_drop;
- production split (when there is one): the challenger is right on more of the discordant images and McNemar's
  exact two-sided p < production_p. Without a production split this check is not applied.

Example:
    >>> v = decide_promotion(test, production, Promotion())
    >>> v.promote, v.reasons
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sightline.spec import Promotion

__all__ = ["Check", "Verdict", "decide_promotion"]

_EPS = 1e-12  # a difference equal to the allowed drop passes, whatever the float rounding


@dataclass(frozen=True)
class Check:
    name: str  # "test_accuracy" | "class_recall" | "production"
    passed: bool | None  # None: not applied (no production split)
    detail: str  # one sentence with the figures


@dataclass
class Verdict:
    promote: bool
    checks: list[Check] = field(default_factory=list)
    rule: dict[str, float] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        """The details of the failed checks (why not), or of every applied check (why)."""
        failed = [c.detail for c in self.checks if c.passed is False]
        return failed or [c.detail for c in self.checks if c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reasons": self.reasons, "checks": [asdict(c) for c in self.checks],
                "rule": self.rule}


def _pts(share: float) -> str:
    return f"{share * 100:+.1f} points"


def _test_check(test: dict[str, Any], rule: Promotion) -> Check:
    acc = test["accuracy"]
    ok = acc["difference"] >= -rule.max_test_drop - _EPS
    return Check("test_accuracy", ok,
                 f"frozen test accuracy {acc['champion']:.3f} -> {acc['challenger']:.3f} ({_pts(acc['difference'])}, "
                 f"{acc['level']:.0%} CI {_pts(acc['low'])} to {_pts(acc['high'])}, {acc['n_images']} images); "
                 f"allowed drop {rule.max_test_drop * 100:.1f} points")


def _fewer(row: dict[str, Any]) -> str:
    """'1 fewer recognised' / 'N fewer recognised': the class's test images the challenger misses beyond the
    champion."""
    return f"{round(-row['change'] * row['support'])} fewer recognised"


def _recall_check(test: dict[str, Any], rule: Promotion) -> Check:
    rows = {c: r for c, r in test["per_class_recall"].items() if r["change"] is not None}
    worse = {c: r for c, r in rows.items() if r["change"] < -rule.max_class_recall_drop - _EPS}
    limit = f"allowed drop {rule.max_class_recall_drop * 100:.1f} points"
    if worse:
        # the images behind the points: on a small class one image is more than the allowed drop (1 of 42: 2.4)
        listed = ", ".join(f"{c} {r['champion']:.3f} -> {r['challenger']:.3f} ({_pts(r['change'])}, {r['support']} "
                           f"images: {_fewer(r)})" for c, r in worse.items())
        return Check("class_recall", False, f"recall fell on the frozen test for {listed}; {limit}")
    if not rows:
        return Check("class_recall", True, "no class has images in the frozen test; nothing to compare")
    name, low = min(((c, r["change"]) for c, r in rows.items()), key=lambda t: t[1])
    return Check("class_recall", True, f"no class recall on the frozen test fell by more than "
                 f"{rule.max_class_recall_drop * 100:.1f} points (largest change: {name} {_pts(low)})")


def _production_check(production: dict[str, Any] | None, rule: Promotion) -> Check:
    if production is None:
        return Check("production", None, "no production split (DATA/production/): the production rule was not applied")
    m, acc = production["mcnemar"], production["accuracy"]
    better = m["challenger_only"] > m["champion_only"]
    ok = better and m["p_value"] < rule.production_p
    words = "better" if better else ("worse" if m["challenger_only"] < m["champion_only"] else "no different")
    detail = (f"production accuracy {acc['champion']:.3f} -> {acc['challenger']:.3f} ({_pts(acc['difference'])}, "
              f"{acc['n_images']} images): {words}, challenger alone right on {m['challenger_only']} vs champion "
              f"alone on {m['champion_only']}, McNemar p={m['p_value']:.3g}; needed better with p < {rule.production_p:g}")
    need = _fewest_discordant(rule.production_p)
    disagree = m["challenger_only"] + m["champion_only"]
    if not ok and disagree < need:  # no result on so few images passes: say so, or it reads as the challenger's fault
        detail += (f", which takes at least {need} images on which exactly one model is right ({disagree} here): "
                   "label more of the service's random slice (feedback export puts it in production/) and challenge "
                   "again")
    return Check("production", ok, detail)


def _fewest_discordant(p: float) -> int:
    """The fewest discordant images on which McNemar's exact two-sided test can give a p-value below `p` (all of
    them for one model: p = 2 * 0.5 ** n)."""
    n = 1
    while 2 * 0.5 ** n >= p and n < 1000:
        n += 1
    return n


def decide_promotion(test: dict[str, Any], production: dict[str, Any] | None, rule: Promotion) -> Verdict:
    """The verdict for comparisons of the frozen test split and the production split (None when absent)."""
    checks = [_test_check(test, rule), _recall_check(test, rule), _production_check(production, rule)]
    return Verdict(promote=all(c.passed is not False for c in checks), checks=checks, rule=rule.model_dump())
