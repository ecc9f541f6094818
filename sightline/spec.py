"""The problem definition, `DATA/sightline.yaml` (DESIGN.md, "Dataset layout"): what the model is for, which metric
matters, what each kind of error costs, the targets it must meet and when a person should look instead.

Evaluation reads it to choose thresholds on validation and to report pass/fail on test
(sightline.evaluate.thresholds). `sightline init DATA` writes a commented template with the classes filled in.

Example:
    >>> spec = load_spec("data/sightline.yaml")
    >>> spec.primary_metric, spec.cost("crack")        # ("macro_f1", Cost(false_positive=1.0, false_negative=50.0))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sightline.errors import SpecError

__all__ = [
    "SPEC_FILE",
    "Cost",
    "Target",
    "ProblemSpec",
    "load_spec",
    "find_spec",
    "parse_spec",
    "write_spec_template",
]

SPEC_FILE = "sightline.yaml"

# Metrics a whole-dataset target or the primary metric may name, and those that need a class.
GLOBAL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "expected_cost")
CLASS_METRICS = ("recall", "precision", "f1", "false_positive_rate")


@dataclass(frozen=True)
class Cost:
    """Cost of one error about a class, in the user's units (one-vs-rest: a false positive predicts the class
    when it is absent, a false negative misses it)."""

    false_positive: float = 1.0
    false_negative: float = 1.0


@dataclass(frozen=True)
class Target:
    """One pass/fail requirement, chosen on val and reported on test: `metric` of `class_name` (or overall) must be
    at least `min` and/or at most `max`."""

    metric: str
    class_name: str | None = None
    min: float | None = None
    max: float | None = None

    def describe(self) -> str:
        what = f"{self.metric} of {self.class_name}" if self.class_name else self.metric
        parts = []
        if self.min is not None:
            parts.append(f">= {self.min:g}")
        if self.max is not None:
            parts.append(f"<= {self.max:g}")
        return f"{what} {' and '.join(parts)}"

    def passes(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


@dataclass(frozen=True)
class ProblemSpec:
    task: str = ""
    primary_metric: str = "macro_f1"  # accuracy | balanced_accuracy | macro_f1 | recall:<class> | expected_cost
    review_below_confidence: float | None = None  # None: chosen on val
    costs: dict[str, Cost] = field(default_factory=dict)  # per class; "default" applies to unlisted classes
    targets: tuple[Target, ...] = ()
    path: Path | None = None

    def cost(self, class_name: str) -> Cost:
        return self.costs.get(class_name, self.costs.get("default", Cost()))

    def has_explicit_cost(self, class_name: str) -> bool:
        return class_name in self.costs

    def check_classes(self, classes: list[str]) -> None:
        """Raise SpecError when the definition names a class the model does not know."""
        where = self.path or SPEC_FILE
        known = set(classes)
        named = [c for c in self.costs if c != "default"] + [t.class_name for t in self.targets if t.class_name]
        if self.primary_metric.startswith("recall:"):
            named.append(self.primary_metric.split(":", 1)[1])
        unknown = sorted({c for c in named if c not in known})
        if unknown:
            raise SpecError(f"{where} names unknown class(es) {unknown}; the classes are {sorted(classes)}.")


def _number(value: Any, where: str, *, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{where} must be a number, got {value!r}.")
    value = float(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise SpecError(f"{where}={value:g} must be between {lo:g} and {hi:g}.")
    return value


def parse_spec(data: Any, path: Path | None = None) -> ProblemSpec:
    """Validate a parsed YAML mapping; SpecError names the file and the field on bad input."""
    src = str(path) if path else SPEC_FILE
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{src} must be a mapping of fields (task, primary_metric, costs, targets).")
    allowed = {"task", "primary_metric", "review_below_confidence", "costs", "targets"}
    extra = sorted(set(data) - allowed)
    if extra:
        raise SpecError(f"{src}: unknown field(s) {extra}; allowed are {sorted(allowed)}.")

    task = data.get("task") or ""
    if not isinstance(task, str):
        raise SpecError(f"{src}: 'task' must be one sentence of text.")

    primary = str(data.get("primary_metric") or "macro_f1")
    if primary not in GLOBAL_METRICS and not (primary.startswith("recall:") and len(primary) > 7):
        raise SpecError(
            f"{src}: primary_metric={primary!r} is unknown; use one of {', '.join(GLOBAL_METRICS)} or recall:<class>."
        )

    review = data.get("review_below_confidence")
    if review is not None:
        review = _number(review, f"{src}: review_below_confidence", lo=0.0, hi=1.0)

    costs: dict[str, Cost] = {}
    raw_costs = data.get("costs") or {}
    if not isinstance(raw_costs, dict):
        raise SpecError(f"{src}: 'costs' must map class names to {{false_positive, false_negative}}.")
    for name, entry in raw_costs.items():
        where = f"{src}: costs.{name}"
        if not isinstance(entry, dict) or set(entry) - {"false_positive", "false_negative"}:
            raise SpecError(f"{where} must be {{false_positive: N, false_negative: N}}.")
        costs[str(name)] = Cost(
            false_positive=_number(entry.get("false_positive", 1), f"{where}.false_positive", lo=0.0, hi=1e12),
            false_negative=_number(entry.get("false_negative", 1), f"{where}.false_negative", lo=0.0, hi=1e12),
        )

    targets: list[Target] = []
    raw_targets = data.get("targets") or []
    if not isinstance(raw_targets, list):
        raise SpecError(f"{src}: 'targets' must be a list of {{metric, class, min|max}}.")
    for i, entry in enumerate(raw_targets):
        where = f"{src}: targets[{i}]"
        if not isinstance(entry, dict) or "metric" not in entry:
            raise SpecError(f"{where} must be a mapping with 'metric' and 'min' or 'max'.")
        unknown = set(entry) - {"metric", "class", "min", "max"}
        if unknown:
            raise SpecError(f"{where}: unknown key(s) {sorted(unknown)}; use metric, class, min, max.")
        metric = str(entry["metric"])
        cls = entry.get("class")
        if metric in CLASS_METRICS and cls is None:
            raise SpecError(f"{where}: metric {metric!r} needs a 'class'.")
        if metric in GLOBAL_METRICS and cls is not None:
            raise SpecError(f"{where}: metric {metric!r} is about all classes; remove 'class'.")
        if metric not in GLOBAL_METRICS + CLASS_METRICS:
            raise SpecError(
                f"{where}: metric {metric!r} is unknown; use one of {', '.join(GLOBAL_METRICS + CLASS_METRICS)}."
            )
        lo = entry.get("min")
        hi = entry.get("max")
        if lo is None and hi is None:
            raise SpecError(f"{where}: give 'min' or 'max'.")
        bound = 1e12 if metric == "expected_cost" else 1.0
        targets.append(
            Target(
                metric=metric,
                class_name=None if cls is None else str(cls),
                min=None if lo is None else _number(lo, f"{where}.min", lo=0.0, hi=bound),
                max=None if hi is None else _number(hi, f"{where}.max", lo=0.0, hi=bound),
            )
        )
    return ProblemSpec(
        task=task.strip(),
        primary_metric=primary,
        review_below_confidence=review,
        costs=costs,
        targets=tuple(targets),
        path=path,
    )


def load_spec(path: str | Path) -> ProblemSpec:
    """Read and validate a problem definition file. Raises SpecError naming the file and field."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path} cannot be read ({exc.strerror or exc}); check the path.") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path} is not valid YAML{line}; fix the syntax.") from exc
    return parse_spec(data, path)


def find_spec(data_dir: str | Path) -> ProblemSpec | None:
    """`DATA/sightline.yaml` when it exists, else None (evaluation then uses defaults)."""
    path = Path(data_dir) / SPEC_FILE
    return load_spec(path) if path.is_file() else None


_TEMPLATE = """\
# Sightline problem definition. Evaluation reads it to choose thresholds on the validation split and to
# report pass/fail on the test split; the server enforces the thresholds it stores in the model bundle.
# Classes found in this dataset: {class_list}

# 1. The task in one sentence: what is being decided, and by whom, when the model is unsure?
task: {task}

# 2. The metric that matters most. One of: accuracy | balanced_accuracy | macro_f1 | expected_cost |
#    recall:<class> (when missing one class is what hurts).
primary_metric: macro_f1

# 3. Human review: predictions less confident than this go to a person. null = choose it on validation
#    (the lowest confidence at which accepted predictions still meet the accuracy target, or 95 %).
review_below_confidence: null

# 4. What does each kind of error cost (any unit: minutes, euros)? Per class, one-vs-rest:
#    false_positive = the model says <class> but it is not; false_negative = the model misses a real <class>.
#    Unlisted classes use `default`. A class with a listed cost gets its own decision threshold.
costs:
  default: {{false_positive: 1, false_negative: 1}}
{cost_lines}
# 5. Targets the model must meet (chosen on val, reported on test). Metrics: accuracy, balanced_accuracy,
#    macro_f1, expected_cost (overall) or recall, precision, f1, false_positive_rate (with `class`).
targets:
  - {{metric: accuracy, min: 0.90}}
{target_lines}"""


def write_spec_template(data_dir: str | Path, classes: list[str], *, overwrite: bool = False) -> Path:
    """Write a commented `DATA/sightline.yaml` with the dataset's classes filled in; returns its path.

    Raises SpecError when the file exists and `overwrite` is False (never clobbers a user's answers)."""
    import yaml

    path = Path(data_dir) / SPEC_FILE
    if path.exists() and not overwrite:
        raise SpecError(f"{path} already exists; edit it, or pass --force to replace it.")
    cost_lines = "".join(
        f"  # {c}: {{false_positive: 1, false_negative: 1}}\n" for c in classes
    )
    target_lines = "".join(f"  # - {{metric: recall, class: {c}, min: 0.95}}\n" for c in classes)
    text = _TEMPLATE.format(
        class_list=", ".join(classes),
        task="Describe in one sentence what the model decides (edit me).",
        cost_lines=cost_lines,
        target_lines=target_lines,
    )
    parse_spec(yaml.safe_load(text), path)  # the template itself must be valid
    path.write_text(text)
    return path
