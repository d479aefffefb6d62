"""Service settings from the environment (prefix ``HEADWATER_``), e.g. ``HEADWATER_INDEX=demo-data/index``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.defaults import choice_error


class Settings(BaseSettings):
    """Where the index is, where to listen, and the limits every request is held to."""

    model_config = SettingsConfigDict(env_prefix="HEADWATER_")

    index: Path = Field(Path("demo-data/index"), description="Index directory (its 'current' build is served).")
    host: str = Field("127.0.0.1", description="Address to listen on; 127.0.0.1 keeps it local.")
    port: int = Field(8000, ge=1, le=65535)
    api_key: str | None = Field(None, description="Key for admin and job endpoints (header X-API-Key).")
    max_k: int = Field(100, ge=1, description="Largest k a query may ask for.")
    max_body_bytes: int = Field(64_000, ge=1024, description="Larger request bodies are refused with 413.")
    max_controls: int = Field(16, ge=0, description="Most control prompts in one contrastive query.")
    device: str = Field("cpu", description="cpu, cuda or auto.")
    default_method: str = Field("auto", description="Method of a query that names none: auto (unlearning where an "
                                "uncached query re-scores its rows within 30 s here, else gradient) or a method name.")
    batch_window_ms: float = Field(4.0, ge=0, le=1000, description="Gradient queries arriving within this many "
                                   "milliseconds of each other share one sketch pass; 0 turns batching off.")

    @field_validator("default_method")
    @classmethod
    def known_method(cls, value: str) -> str:
        error = choice_error(value)
        if error is not None:
            raise ValueError(f"default_method {error}")
        return value
