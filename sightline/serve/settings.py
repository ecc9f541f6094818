"""Service configuration, read from `SIGHTLINE_*` environment variables (pydantic-settings).

Example:
    SIGHTLINE_BUNDLE=runs/demo/bundle SIGHTLINE_PORT=8080 sightline serve runs/demo
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from sightline.errors import UserInputError

__all__ = ["Settings", "database_url"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIGHTLINE_", extra="ignore")

    bundle: Path = Field(description="RUN or bundle folder to serve (exported with `sightline export`).")
    int8: bool = Field(False, description="Serve model.int8.onnx instead of model.onnx.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<bundle>/sightline.db. postgresql+psycopg://... scales."
    )
    host: str = Field("127.0.0.1", description="Bind address; loopback unless you mean to expose the service.")
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(20 * 2**20, ge=1, description="Largest request body, bytes (413 above).")
    max_images_per_request: int = Field(16, ge=1, description="Most `file` fields per request (413 above).")
    max_pixels: int = Field(40_000_000, ge=1, description="Largest image, width x height (413 above).")
    rate_limit_per_minute: int = Field(600, ge=0, description="Requests per minute per API key (429 above); 0 = off.")
    batch_max_size: int = Field(32, ge=1, description="Most images coalesced into one inference call.")
    batch_max_wait_ms: float = Field(4.0, ge=0, description="How long the first image waits for others to join.")
    review_confidence: float | None = Field(
        None, ge=0, le=1, description="Override the bundle's review threshold (answers less sure go to review)."
    )
    top_k: int = Field(3, ge=1)
    threads: int | None = Field(None, ge=1, description="ONNX Runtime intra-op threads; default all usable cores.")
    decode_threads: int | None = Field(
        None, ge=1, description="Requests decoding images at once; default the usable cores (more only adds contention)."
    )
    require_api_key: bool = Field(True, description="Turn off only for local experiments.")
    key_cache_s: float = Field(5.0, ge=0, description="How long a verified key is trusted before re-checking.")

    def resolved_database_url(self) -> str:
        return database_url(self.database_url, self.bundle)


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


def load_settings(**overrides: object) -> Settings:
    """Settings from SIGHTLINE_* variables plus command-line overrides; a bad value is one UserInputError naming
    the setting and its variable, not pydantic's multi-line report."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))} (SIGHTLINE_{'_'.join(map(str, e['loc'])).upper()}): {e['msg']}"
            for e in exc.errors()
        )
        raise UserInputError(f"invalid setting: {problems}.") from None
