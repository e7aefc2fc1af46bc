"""Settings read from the environment (``PYCANARY_*``), shared by every face."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

from .keys import DEFAULT_PREFIX

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PYCANARY_", extra="ignore")

    redis_url: str = DEFAULT_REDIS_URL
    prefix: str = DEFAULT_PREFIX
    max_payload_bytes: int = 1024 * 1024
