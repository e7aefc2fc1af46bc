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
    #: TLS for ``rediss://`` URLs (unless the URL's own ssl_ca_certs/ssl_certfile/ssl_keyfile
    #: query parameters, or connect()'s keyword arguments, say otherwise): the CA bundle that
    #: signed the server's certificate, and this client's certificate and key when the server
    #: runs with ``tls-auth-clients yes``.
    redis_tls_ca: str | None = None
    redis_tls_cert: str | None = None
    redis_tls_key: str | None = None
    #: Admin API bearer tokens, ``viewer:<token>,operator:<token>`` (pycanary/api/auth.py);
    #: ``pycanary api`` refuses to start without them unless ``--no-auth`` on loopback.
    api_tokens: str | None = None
    #: Webhooks every notification goes to: ``KIND:URL`` entries separated by commas, KIND
    #: ``json`` or ``slack`` (a bare URL is json), e.g.
    #: ``json:http://127.0.0.1:9000/hook,slack:https://hooks.slack.com/services/...``; parsed
    #: by ``pycanary.notify.parse_webhooks`` (errors name PYCANARY_WEBHOOKS).
    webhooks: str = ""
