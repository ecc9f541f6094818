"""Service configuration, read from `SIGHTLINE_*` environment variables (pydantic-settings).

A problem definition, sightline.yaml (`--spec`, SIGHTLINE_SPEC), fills what the environment and the command line
leave unset: its `monitor:` section the drift-window and alert settings, its `review_below_confidence` the review
rule. `sightline monitor` reads the window settings the same way (`MonitorSettings`), its options above them all.

Example:
    SIGHTLINE_BUNDLE=runs/demo/bundle SIGHTLINE_PORT=8080 sightline serve runs/demo
    sightline serve runs/demo --spec data/sightline.yaml       # or SIGHTLINE_SPEC=data/sightline.yaml
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sightline.errors import UserInputError

if TYPE_CHECKING:
    from sightline.spec import ProblemSpec

__all__ = ["MonitorSettings", "Settings", "database_url", "load_settings", "load_monitor_settings", "spec_settings"]

# A thread count above this is a typo (SIGHTLINE_THREADS=100000 made ONNX Runtime start 100,000 threads, and the
# process was killed for memory); the largest machines have a few hundred cores.
MAX_THREADS = 1024


def spec_settings(spec: ProblemSpec) -> dict[str, Any]:
    """The settings (`Settings` names) a problem definition sets: the keys its `monitor:` section writes, and
    `review_confidence` when it gives `review_below_confidence` (the rule evaluation stored in the bundle, so an
    edit of the file takes effect without evaluating again)."""
    values = spec.monitor.settings()
    if spec.review_below_confidence is not None:
        values["review_confidence"] = spec.review_below_confidence
    return values


class MonitorSettings(BaseSettings):
    """How windows of predictions are tested: shared by the service and `sightline monitor`. Each value comes from,
    first found: the caller (command-line options), its SIGHTLINE_* variable, the `spec` file, the default."""

    model_config = SettingsConfigDict(env_prefix="SIGHTLINE_", extra="ignore")

    spec: Path | None = Field(
        None, description="A sightline.yaml, or a data folder holding one: its `monitor:` section sets the monitor and "
        "alert settings below (window, min_window, alpha, consecutive, webhook_url), its review_below_confidence the "
        "review rule; a SIGHTLINE_* variable set too wins."
    )
    monitor_window: int = Field(500, ge=2, description="N: predictions per window (the last N, and blocks of N).")
    monitor_min_window: int = Field(
        50, ge=2, description="Windows with fewer predictions are not tested (the report says so)."
    )
    monitor_alpha: float = Field(0.05, gt=0, lt=1, description="False-alarm rate per window (Bonferroni inside).")
    monitor_consecutive: int = Field(
        2, ge=1, description="K: an alert fires after K consecutive significant windows and clears after K clean."
    )
    monitor_permutations: int = Field(200, ge=20, description="Permutations of the MMD feature test.")

    @model_validator(mode="before")
    @classmethod
    def _from_spec(cls, data: object) -> object:
        """The `spec` file fills the settings that the caller and the environment leave unset; a missing or bad
        file is one SpecError naming the file and the field."""
        if isinstance(data, dict) and data.get("spec"):
            from sightline.spec import SPEC_FILE, load_spec

            path = Path(data["spec"]).expanduser()
            if path.is_dir():
                path = path / SPEC_FILE
            data["spec"] = path
            for name, value in spec_settings(load_spec(path)).items():
                if data.get(name) is None:
                    data[name] = value
        return data


class Settings(MonitorSettings):
    model_config = SettingsConfigDict(env_prefix="SIGHTLINE_", extra="ignore")

    bundle: Path | None = Field(
        None, description="RUN or bundle folder to serve (exported with `sightline export`); or use `registry`."
    )
    registry: Path | str | None = Field(
        None, description="Serve what `alias` points to in the model registry whose copies are in this folder or "
        "fsspec URL (needs database_url, the registry's database); switches within seconds of a promote or rollback."
    )
    alias: str = Field("champion", description="Registry alias to serve: champion or challenger.")
    registry_poll_s: float = Field(1.0, gt=0, description="How often the registry alias is checked, seconds.")
    int8: bool = Field(False, description="Serve model.int8.onnx instead of model.onnx.")
    # Shadow mode (sightline/serve/shadow.py): a challenger scores a sample of traffic after the answer is sent.
    shadow: str | None = Field(
        None, description="Challenger to shadow: a RUN or bundle folder, or with `registry` a registry version or "
        "alias (challenger, v3). Its answers are stored for comparison (GET /v1/shadow), never returned."
    )
    shadow_sample: float = Field(0.1, ge=0, le=1, description="Share of predict requests the challenger also scores.")
    shadow_queue: int = Field(
        64, ge=1, description="Sampled requests waiting for the challenger at most; more are dropped (and counted)."
    )
    shadow_queue_bytes: int = Field(64 * 2**20, ge=1, description="Bytes of waiting sampled requests at most.")
    shadow_threads: int = Field(
        1, ge=1, le=MAX_THREADS, description="ONNX Runtime threads of the challenger (it shares the cores with serving)."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<bundle>/sightline.db. postgresql+psycopg://... scales."
    )
    host: str = Field("127.0.0.1", description="Bind address; loopback unless you mean to expose the service.")
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(20 * 2**20, ge=1, description="Largest request body, bytes (413 above).")
    # uvicorn's httptools protocol caps neither a request's head nor the time it takes (serve.protocol)
    max_header_bytes: int = Field(32 * 2**10, ge=1024, description="Largest request line + headers, bytes (431 "
                                                                  "above, connection closed).")
    head_timeout_s: float = Field(15.0, gt=0, description="Time to receive a request's line and headers (408 after).")
    body_idle_timeout_s: float = Field(30.0, gt=0, description="Longest wait for the next chunk of a request body "
                                                               "(408 after, connection closed).")
    limit_concurrency: int | None = Field(None, ge=1, description="uvicorn's cap on open connections and tasks "
                                                                  "(503 above); default none.")
    max_images_per_request: int = Field(16, ge=1, description="Most `file` fields per request (413 above).")
    max_pixels: int = Field(40_000_000, ge=1, description="Largest image, width x height (413 above).")
    rate_limit_per_minute: int = Field(600, ge=0, description="Requests per minute per API key, the review page's "
                                       "heatmaps included (429 above); 0 = off.")
    failed_keys_per_minute: int = Field(
        30, ge=0, description="Unknown or revoked keys one client address may present a minute (API and web sign-in); "
                              "above it, its keys not yet verified get 429 without a database read; 0 = off.")
    batch_max_size: int = Field(32, ge=1, description="Most images coalesced into one inference call.")
    batch_max_wait_ms: float = Field(
        4.0, ge=0, le=10_000, description="How long the first image waits for others to join (at most 10 s)."
    )
    review_confidence: float | None = Field(
        None, ge=0, le=1, description="Override the bundle's review threshold (answers less sure go to review)."
    )
    top_k: int = Field(3, ge=1)
    threads: int | None = Field(
        None, ge=1, le=MAX_THREADS, description="ONNX Runtime intra-op threads; default all usable cores."
    )
    decode_threads: int | None = Field(
        None, ge=1, le=MAX_THREADS,
        description="Requests decoding images at once; default the usable cores (more only adds contention)."
    )
    require_api_key: bool = Field(True, description="Turn off only for local experiments.")
    key_cache_s: float = Field(5.0, ge=0, description="How long a verified key is trusted before re-checking.")
    # Kept images (content-addressed, sightline/serve/images.py)
    keep_images: bool = Field(True, description="Keep review/unknown images and a sample of accepted ones.")
    image_store: Path | str | None = Field(
        None, description="Image folder, or an fsspec URL (s3://bucket/images, memory://...; its package, e.g. s3fs, "
        "installed); default <bundle>/images, beside sightline.db."
    )
    keep_accepted: float = Field(
        0.03, ge=0, le=1, description="Share of all answers drawn at random into the production slice, whatever "
                                      "their decision (accepted ones drawn are kept; queued ones are kept anyway)."
    )
    image_store_max_bytes: int | None = Field(
        None, ge=0, description="Evict unlabelled sampled images, oldest first, above this many bytes."
    )
    image_store_max_age_days: float | None = Field(
        None, gt=0, description="Evict unlabelled sampled images older than this; review/unknown/labelled stay."
    )
    # Monitoring (needs the bundle's reference profile, reference.npz; without one serving is unchanged). The spec
    # file, window, min_window, alpha, consecutive and permutations: see MonitorSettings.
    monitor: bool = Field(True, description="Open-set 'unknown' decisions, per-prediction signals, drift windows.")
    monitor_every: int = Field(500, ge=1, description="Run the monitor after this many new predictions ...")
    monitor_interval_minutes: float = Field(5.0, gt=0, description="... or after this many minutes, whichever first.")
    monitor_calendar: str = Field("hour,day", description="Calendar windows (UTC) besides blocks: 'hour', 'day', both "
                                                          "comma-separated, or '' for none.")
    alert_webhook_url: str | None = Field(None, description="POST alert events here (Standard Webhooks, signed).")
    alert_webhook_secret: SecretStr | None = Field(None, description="Signing secret, whsec_<base64>.")
    alert_webhook_attempts: int = Field(5, ge=1, description="Tries per event and monitor run.")
    alert_webhook_backoff_s: float = Field(1.0, ge=0, description="Wait before the 2nd try; doubles each time.")
    alert_webhook_timeout_s: float = Field(10.0, gt=0)

    @field_validator("monitor_calendar")
    @classmethod
    def _calendar(cls, value: str) -> str:
        units = [u.strip() for u in value.split(",") if u.strip()]
        bad = [u for u in units if u not in ("hour", "day")]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a calendar window; use 'hour', 'day' or 'hour,day'")
        return ",".join(units)

    @field_validator("alert_webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value or None

    @field_validator("alert_webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from sightline.serve.webhooks import parse_secret

            try:
                parse_secret(value.get_secret_value())
            except UserInputError as exc:
                raise ValueError(str(exc).split(" ", 1)[1] if " " in str(exc) else str(exc)) from None
        return value

    @field_validator("image_store", "registry", mode="before")
    @classmethod
    def _location(cls, value: object, info: ValidationInfo) -> object:
        """A URL ("scheme://...", not file://) stays a string and must name a filesystem fsspec can open; anything
        else is a folder."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        text = str(value).strip()
        if "://" not in text:
            return Path(text)
        if text.startswith("file://"):
            return Path(text.removeprefix("file://"))
        from sightline.storage.images import check_url

        try:
            check_url(text, what=info.field_name.replace("_", " "))
        except UserInputError as exc:
            raise ValueError(str(exc).rstrip(".")) from None
        return text

    @field_validator("shadow", mode="before")
    @classmethod
    def _shadow(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return str(value).strip()

    @field_validator("alias")
    @classmethod
    def _alias(cls, value: str) -> str:
        if value not in ("champion", "challenger"):
            raise ValueError(f"{value!r} is not a registry alias; use 'champion' or 'challenger'")
        return value

    @model_validator(mode="after")
    def _model_source(self) -> Settings:
        if self.bundle is None and self.registry is None:
            raise ValueError("nothing to serve: give a bundle (SIGHTLINE_BUNDLE) or a registry (SIGHTLINE_REGISTRY)")
        if self.bundle is not None and self.registry is not None:
            raise ValueError("give a bundle (SIGHTLINE_BUNDLE) or a registry (SIGHTLINE_REGISTRY), not both")
        if self.registry is not None and not self.database_url:
            raise ValueError("SIGHTLINE_REGISTRY needs SIGHTLINE_DATABASE_URL (--database), the registry's database")
        return self

    @model_validator(mode="after")
    def _webhook_pair(self) -> Settings:
        if self.alert_webhook_url and self.alert_webhook_secret is None:
            raise ValueError("SIGHTLINE_ALERT_WEBHOOK_URL needs SIGHTLINE_ALERT_WEBHOOK_SECRET (whsec_<base64>) "
                             "to sign the events")
        if self.monitor_min_window > self.monitor_window:
            raise ValueError(f"SIGHTLINE_MONITOR_MIN_WINDOW ({self.monitor_min_window}) is above "
                             f"SIGHTLINE_MONITOR_WINDOW ({self.monitor_window}): no window would ever be tested")
        return self

    @property
    def calendar_units(self) -> list[str]:
        return [u for u in self.monitor_calendar.split(",") if u]

    def resolved_database_url(self) -> str:
        return database_url(self.database_url, self.bundle)

    def resolved_image_store(self) -> Path | str:
        """The image store: a folder, or an fsspec URL (a string with "scheme://")."""
        if self.image_store is not None:
            return self.image_store
        if self.bundle is None and self.registry is not None:  # beside the registry's copies, never inside them
            if isinstance(self.registry, str):
                head, _, tail = self.registry.rstrip("/").rpartition("/")
                if head.endswith(":/") or not tail:
                    raise UserInputError(f"the registry {self.registry} has no folder above it for the kept images; "
                                         "set SIGHTLINE_IMAGE_STORE.")
                return f"{head}/images"
            return self.registry.expanduser().resolve().parent / "images"
        from sightline.bundle import resolve_bundle_dir

        return resolve_bundle_dir(self.bundle) / "images"


def database_url(url: str | None, bundle: Path | None) -> str:
    """The explicit URL, else a SQLite file in the bundle folder."""
    if url:
        return url
    if bundle is None:
        raise UserInputError(
            "no database: pass --bundle BUNDLE (its sightline.db is used) or set SIGHTLINE_DATABASE_URL."
        )
    from sightline.bundle import resolve_bundle_dir

    return f"sqlite:///{(resolve_bundle_dir(bundle) / 'sightline.db').resolve()}"


_Loaded = TypeVar("_Loaded", bound=MonitorSettings)


def _load(cls: type[_Loaded], overrides: dict[str, Any]) -> _Loaded:
    from pydantic import ValidationError

    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))} (SIGHTLINE_{'_'.join(map(str, e['loc'])).upper()}): {e['msg']}"
            if e["loc"] else e["msg"].removeprefix("Value error, ")  # a check across settings names them itself
            for e in exc.errors()
        )
        raise UserInputError(f"invalid setting: {problems}.") from None


def load_settings(**overrides: object) -> Settings:
    """Settings from SIGHTLINE_* variables plus command-line overrides; a bad value is one UserInputError naming
    the setting and its variable, not pydantic's multi-line report (a bad spec file: one SpecError)."""
    return _load(Settings, overrides)


def load_monitor_settings(**overrides: object) -> MonitorSettings:
    """The window settings as the service would read them (SIGHTLINE_* variables above the spec file, SIGHTLINE_SPEC
    or `spec=`), with `overrides` (command-line options; None = not given) above both. Errors as `load_settings`."""
    return _load(MonitorSettings, {k: v for k, v in overrides.items() if v is not None})
