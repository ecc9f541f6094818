"""The problem definition, `DATA/sightline.yaml` (DESIGN.md, "Dataset layout"): what the model is for, which metric
matters, what each kind of error costs, the targets it must meet and when a person should look instead.

Evaluation reads it to choose thresholds on validation and to report pass/fail on test
(sightline.evaluate.thresholds); `sightline challenge` its `promotion:` rule; the service its `monitor:` section
(windows, alpha, the alert rule and webhook) when SIGHTLINE_SPEC names the file. `sightline init DATA` writes a
commented template with the classes filled in.

Example:
    >>> spec = load_spec("data/sightline.yaml")
    >>> spec.primary_metric, spec.cost("crack")        # ("macro_f1", Cost(false_positive=1.0, false_negative=50.0))
"""
from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from sightline.errors import SpecError, validation_error

__all__ = [
    "SPEC_FILE",
    "Cost",
    "Target",
    "Promotion",
    "MonitorSpec",
    "ProblemSpec",
    "load_spec",
    "find_spec",
    "parse_spec",
    "write_spec_template",
]

SPEC_FILE = "sightline.yaml"

# Metrics a whole-dataset target or the primary metric may name, and those that need a class.
GlobalMetric = Literal["accuracy", "balanced_accuracy", "macro_f1", "expected_cost"]
ClassMetric = Literal["recall", "precision", "f1", "false_positive_rate"]
GLOBAL_METRICS: tuple[str, ...] = typing.get_args(GlobalMetric)
CLASS_METRICS: tuple[str, ...] = typing.get_args(ClassMetric)


def _not_bool(value: Any) -> Any:
    """YAML's `true` is not a number (pydantic would read it as 1)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


Amount = Annotated[float, BeforeValidator(_not_bool), Field(ge=0, le=1e12)]  # a cost or an expected cost
Share = Annotated[float, BeforeValidator(_not_bool), Field(ge=0, le=1)]  # a confidence or a rate
Count = Annotated[int, BeforeValidator(_not_bool), Field(ge=1, le=10**9)]  # a number of windows
Size = Annotated[int, BeforeValidator(_not_bool), Field(ge=2, le=10**9)]  # a number of predictions


class _Part(BaseModel):
    """A part of the file: immutable, unknown keys rejected (a typo must not silently become a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True, validate_by_name=True,
                              validate_by_alias=True)


class Cost(_Part):
    """Cost of one error about a class, in the user's units (one-vs-rest: a false positive predicts the class
    when it is absent, a false negative misses it)."""

    false_positive: Amount = 1.0
    false_negative: Amount = 1.0


class Target(_Part):
    """One pass/fail requirement, chosen on val and reported on test: `metric` of `class_name` (or overall) must be
    at least `min` and/or at most `max`. In the file, `class_name` is written `class`."""

    metric: Literal[GlobalMetric, ClassMetric]  # one flat Literal: a union would put its branch names in errors
    class_name: str | None = Field(None, alias="class")
    min: Amount | None = None
    max: Amount | None = None

    @field_validator("min", "max")
    @classmethod
    def _share_unless_cost(cls, value: float | None, info: ValidationInfo) -> float | None:
        metric = info.data.get("metric")
        if value is not None and metric is not None and metric != "expected_cost" and value > 1:
            raise ValueError(f"must be <= 1 ({metric} is a share between 0 and 1)")
        return value

    @model_validator(mode="after")
    def _class_and_bound(self) -> Target:
        if self.metric in CLASS_METRICS and self.class_name is None:
            raise ValueError(f"metric {self.metric!r} needs a 'class'")
        if self.metric in GLOBAL_METRICS and self.class_name is not None:
            raise ValueError(f"metric {self.metric!r} is about all classes; remove 'class'")
        if self.min is None and self.max is None:
            raise ValueError("give 'min' or 'max'")
        return self

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


class Promotion(_Part):
    """When a challenger may replace the champion (`sightline challenge`; sightline.loop.verdict). Differences are
    challenger minus champion, as shares (0.01 = 1 point)."""

    max_test_drop: Share = 0.01  # accuracy on the frozen test split may fall by at most this much
    production_p: Share = 0.05  # with a production split: better there, McNemar's exact two-sided p below this
    max_class_recall_drop: Share = 0.02  # no class's recall on the frozen test split may fall by more than this


class MonitorSpec(_Part):
    """How the service watches the deployed model (sightline.serve.monitoring): read when the service is given this
    file (SIGHTLINE_SPEC); a SIGHTLINE_* variable set in the environment wins over it. Alerts always go to the log
    and Prometheus; `webhook_url` adds a signed webhook, whose secret stays out of this file (it is usually
    committed): set SIGHTLINE_ALERT_WEBHOOK_SECRET."""

    window: Size = 500  # N: predictions per window (the last N, and blocks of N)
    min_window: Size = 50  # windows with fewer predictions are shown, not tested
    alpha: Annotated[float, BeforeValidator(_not_bool), Field(gt=0, le=0.5)] = 0.05  # false alarms per window
    consecutive: Count = 2  # K: an alert fires after K significant windows in a row and clears after K clean ones
    webhook_url: str | None = None  # POST alert events here, signed per the Standard Webhooks spec

    @model_validator(mode="before")
    @classmethod
    def _no_secret(cls, data: Any) -> Any:
        if isinstance(data, dict) and any("secret" in str(k) for k in data):
            raise ValueError("the webhook's signing secret does not belong in this file; remove it and set "
                             "SIGHTLINE_ALERT_WEBHOOK_SECRET (whsec_<base64>) where the service runs")
        return data

    @field_validator("webhook_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value or None

    @model_validator(mode="after")
    def _window_holds_minimum(self) -> MonitorSpec:
        if self.min_window > self.window:
            raise ValueError(f"min_window ({self.min_window}) is above window ({self.window}): no window would ever "
                             "be tested")
        return self

    def settings(self) -> dict[str, Any]:
        """The service settings (`sightline.serve.settings.Settings` names) that the file sets: only the keys it
        writes, so an absent key leaves the service's default (or its SIGHTLINE_* variable) in force."""
        return {SERVICE_SETTINGS[name]: getattr(self, name) for name in sorted(self.model_fields_set)}


# MonitorSpec key -> the service setting it sets (and so SIGHTLINE_<SETTING>, which wins over the file).
SERVICE_SETTINGS = {"window": "monitor_window", "min_window": "monitor_min_window", "alpha": "monitor_alpha",
                    "consecutive": "monitor_consecutive", "webhook_url": "alert_webhook_url"}


class ProblemSpec(_Part):
    """The whole file. `path` is where it was read from (None when built in code)."""

    task: str = ""  # one sentence: what is decided, and by whom when the model is unsure
    primary_metric: str = "macro_f1"  # accuracy | balanced_accuracy | macro_f1 | recall:<class> | expected_cost
    review_below_confidence: Share | None = None  # None: chosen on val
    costs: dict[str, Cost] = {}  # per class; "default" applies to unlisted classes
    targets: tuple[Target, ...] = ()
    promotion: Promotion = Promotion()  # the rule `sightline challenge` applies
    monitor: MonitorSpec = MonitorSpec()  # drift windows and alerts of the service (SIGHTLINE_SPEC=this file)
    _path: Path | None = PrivateAttr(None)

    @property
    def path(self) -> Path | None:
        return self._path

    @field_validator("task", "primary_metric", "costs", "targets", "promotion", "monitor", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        """`costs:` with nothing after it is YAML null: the same as leaving the key out."""
        return cls.model_fields[str(info.field_name)].get_default(call_default_factory=True) if value is None else value

    @field_validator("task")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @field_validator("primary_metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in GLOBAL_METRICS and not (value.startswith("recall:") and len(value) > len("recall:")):
            raise ValueError(f"is unknown; use one of {', '.join(GLOBAL_METRICS)} or recall:<class>")
        return value

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


def parse_spec(data: Any, path: Path | None = None) -> ProblemSpec:
    """Validate a parsed YAML mapping (None = an empty file); a SpecError names the file, the field path, the bad
    value and what it must be, in one line."""
    try:  # by_name=False: the file spells a target's class `class`, never `class_name`
        spec = ProblemSpec.model_validate({} if data is None else data, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise validation_error(exc, where=str(path) if path else SPEC_FILE, cls=SpecError, model=ProblemSpec) from None
    spec._path = path
    return spec


def load_spec(path: str | Path) -> ProblemSpec:
    """Read and validate a problem definition file (or the `sightline.yaml` of a data folder, as `serve --spec` and
    `monitor --spec` take it). Raises SpecError naming the file and field."""
    import yaml

    path = Path(path)
    if path.is_dir():
        path = path / SPEC_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path} cannot be read ({exc.strerror or exc}); check the path.") from exc
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML.") from None
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
{target_lines}
# 6. When a retrained model (challenger) may replace the one in service (champion): `sightline challenge`.
#    Shares: 0.01 = 1 point. production_p applies when DATA/production/ holds labelled production images.
# promotion: {{max_test_drop: 0.01, production_p: 0.05, max_class_recall_drop: 0.02}}

# 7. Watching the deployed model (`sightline serve` with SIGHTLINE_SPEC=<this file>): drift tests on windows of
#    `window` predictions at false-alarm rate `alpha`; an alert after `consecutive` significant windows, sent to the
#    log, Prometheus and, with webhook_url, a signed webhook (its secret: SIGHTLINE_ALERT_WEBHOOK_SECRET, not here).
#    A SIGHTLINE_MONITOR_* / SIGHTLINE_ALERT_* variable wins over these.
# monitor: {{window: 500, min_window: 50, alpha: 0.05, consecutive: 2, webhook_url: "https://example.com/hook"}}
"""


def write_spec_template(data_dir: str | Path, classes: list[str], *, overwrite: bool = False) -> Path:
    """Write a commented `DATA/sightline.yaml` with the dataset's classes filled in; returns its path.

    Raises SpecError when the file exists and `overwrite` is False (never clobbers a user's answers)."""
    import yaml

    path = Path(data_dir) / SPEC_FILE
    if path.exists() and not overwrite:
        raise SpecError(f"{path} already exists; edit it, or pass --force to replace it.")
    def scalar(name: str) -> str:  # quoted where YAML would read it as something else: yes, null, 'a: b', #c, [x]
        return yaml.safe_dump([name], default_flow_style=True, allow_unicode=True, width=1 << 30).strip()[1:-1]

    cost_lines = "".join(
        f"  # {scalar(c)}: {{false_positive: 1, false_negative: 1}}\n" for c in classes
    )
    target_lines = "".join(f"  # - {{metric: recall, class: {scalar(c)}, min: 0.95}}\n" for c in classes)
    text = _TEMPLATE.format(
        class_list=", ".join(classes),
        task="Describe in one sentence what the model decides (edit me).",
        cost_lines=cost_lines,
        target_lines=target_lines,
    )
    parse_spec(yaml.safe_load(text), path)  # the template itself must be valid
    path.write_text(text)
    return path
