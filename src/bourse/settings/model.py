"""The settings model: every setting, its default, and the checks run at start-up.

Secrets are :class:`pydantic.SecretStr`: their ``repr`` and ``str`` are masked and
no error message built here ever contains a value.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import URL

from bourse.settings.errors import SettingsError
from bourse.settings.names import ENV_PREFIX, env_name, unknown_environment_problems
from bourse.settings.secrets_dirs import SecretsDirsSource, split_dirs
from bourse.settings.urls import check_api_base, mask_database_url, mask_redis_url, normalise_database_url

if TYPE_CHECKING:
    from collections.abc import Iterable

# Values shipped as development defaults or commonly pasted from examples. Any of
# them in production means somebody forgot to configure a real secret.
KNOWN_DEFAULT_SECRETS = frozenset(
    {
        "dev-only-insecure-jwt-secret-change-me",
        "dev-only-insecure-totp-key-change-me",
        "dev-only-psp-sim-api-key",
        "dev-only-psp-sim-webhook-secret",
        "changeme",
        "change-me",
        "secret",
        "password",
        "test",
        "example",
    }
)
MIN_JWT_SECRET_LENGTH = 32
MAX_FEE_BPS = 1_000  # 10%: a trading fee above this is a typo, not a price list

# The payment connectors Bourse ships (bourse.psp.registry builds them).
PSP_CONNECTOR_NAMES = ("simulator", "stripe")
# The Stripe SDK's own default (stripe.DEFAULT_API_BASE), spelled out so that the
# settings module does not import the SDK.
DEFAULT_STRIPE_API_BASE = "https://api.stripe.com"

_KID_RE = re.compile(r"^[A-Za-z0-9._-]{1,32}$")


def parse_previous_jwt_keys(raw: str) -> dict[str, str]:
    """Parse ``kid:secret,kid:secret``. Errors name the position, never a secret."""
    keys: dict[str, str] = {}
    for position, item in enumerate((part.strip() for part in raw.split(",")), start=1):
        if not item:
            continue
        kid, sep, secret = item.partition(":")
        kid = kid.strip()
        if not sep or not _KID_RE.match(kid) or not secret:
            raise ValueError(f"entry {position} must be kid:secret with a key id of 1-32 letters, digits or ._-")
        if kid in keys:
            raise ValueError(f"the key id {kid!r} appears twice")
        keys[kid] = secret
    return keys


class Settings(BaseSettings):
    """All of Bourse's configuration. See the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        extra="ignore",
        frozen=True,
        validate_default=True,
        # Errors raised by Settings(...) directly must not quote the inputs (secrets).
        hide_input_in_errors=True,
        # "inf" would pass the positivity checks and then break timers and drivers.
        allow_inf_nan=False,
    )

    env: Literal["development", "test", "production"] = "development"

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8000, ge=1, le=65535)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)

    database_url: str = "sqlite:///./var/bourse.db"
    database_password: SecretStr | None = None
    database_pool_size: PositiveInt = 20
    database_max_overflow: int = Field(default=0, ge=0)
    database_connect_timeout_seconds: PositiveFloat = 5.0
    database_lock_timeout_ms: PositiveInt = 5000
    database_pool_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # The database URL leads to a pooler in transaction mode (PgBouncer, CloudNativePG's
    # Pooler): every transaction may run on another server connection, so Bourse keeps
    # nothing in the session (docs/decisions/0021). Migrations need the primary itself.
    database_transaction_pooling: bool = False
    sqlite_busy_timeout_ms: PositiveInt = 5000

    redis_url: str | None = None
    redis_password: SecretStr | None = None

    jwt_secret: SecretStr = SecretStr("dev-only-insecure-jwt-secret-change-me")
    psp_api_key: SecretStr = SecretStr("dev-only-psp-sim-api-key")
    psp_secret: SecretStr = SecretStr("dev-only-psp-sim-webhook-secret")

    # Identity and access (docs/decisions/0007-identity-and-tokens.md). Access tokens
    # are HS256 JWTs signed with jwt_secret under the key id jwt_key_id; tokens signed
    # with a retired key stay valid while "kid:secret" pairs in jwt_previous_keys
    # name it, so a key can be rotated without logging everybody out.
    jwt_key_id: str = Field(default="k1", pattern=r"^[A-Za-z0-9._-]{1,32}$")
    jwt_previous_keys: SecretStr | None = None
    jwt_issuer: str = Field(default="bourse", min_length=1)
    jwt_audience: str = Field(default="bourse-api", min_length=1)
    access_token_ttl_seconds: int = Field(default=900, ge=60, le=3600)
    refresh_token_ttl_seconds: int = Field(default=30 * 86400, ge=3600, le=90 * 86400)
    # How long each process may serve a user's role and status as it last read them
    # (docs/decisions/0023-principal-cache.md): a lock, demotion or deletion takes
    # effect everywhere within this, at once in the process that made it. 0: off.
    auth_cache_seconds: float = Field(default=1.0, ge=0, le=1.0)
    # Encrypts TOTP secrets at rest, so a database dump alone does not reveal them.
    totp_key: SecretStr = SecretStr("dev-only-insecure-totp-key-change-me")
    # Failed logins allowed per account and per client IP in one fixed window.
    login_max_failures_per_account: PositiveInt = 5
    login_max_failures_per_ip: PositiveInt = 50
    login_throttle_window_seconds: int = Field(default=900, ge=1, le=86400)
    # argon2id cost (defaults: RFC 9106's second recommendation). Stored hashes made
    # with other parameters are re-hashed at the user's next successful login.
    password_hash_time_cost: int = Field(default=3, ge=1, le=20)
    password_hash_memory_kib: int = Field(default=65536, ge=1024, le=4 * 1024 * 1024)
    password_hash_parallelism: int = Field(default=4, ge=1, le=16)

    secrets_dirs: Annotated[tuple[Path, ...], NoDecode] = ()

    # Ledger (docs/decisions/0009-ledger-locking.md). Responses to money-moving
    # requests are kept this long under their Idempotency-Key; at least 24 hours.
    idempotency_ttl_hours: int = Field(default=24, ge=24, le=24 * 30)

    # Payment providers (docs/decisions/0010-payments.md). The connectors that are
    # active, by name; each serves /api/v1/psp/{name}/webhook. "simulator" is the
    # built-in PSP simulator (`bourse psp-sim`, which `bourse up` starts) at psp_sim_url.
    psp_connectors: Annotated[tuple[str, ...], NoDecode] = ("simulator",)
    psp_sim_url: str = "http://127.0.0.1:8100"
    psp_timeout_seconds: PositiveFloat = 10.0
    stripe_api_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    # Where the Stripe connector sends its API calls: Stripe itself, or stripe-mock or a
    # proxy in front of Stripe. https:// is required in production.
    stripe_api_base: str = DEFAULT_STRIPE_API_BASE
    # Where a payer's browser returns after a hosted checkout (the client app).
    public_url: str = "http://127.0.0.1:8000"

    # Deposits left pending this long (the payer never finished the checkout) expire.
    deposit_expiry_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60)
    # Withdrawals. Amounts are decimal strings per asset, in the asset's own units.
    # No withdrawal within this many minutes of a credited deposit (0: off).
    withdrawal_cooling_off_minutes: int = Field(default=0, ge=0, le=30 * 24 * 60)
    # Per user, per asset, per UTC day; an asset not listed has no daily limit.
    withdrawal_daily_limits: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: {"USD": "50000", "EUR": "50000", "BTC": "5", "ETH": "100"}
    )
    # Above the first amount a withdrawal waits for an operator's approval, above the
    # second for two different operators'. An asset not listed always needs one.
    withdrawal_review_above: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: {"USD": "1000", "EUR": "1000", "BTC": "0.05", "ETH": "1"}
    )
    withdrawal_two_approvals_above: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: {"USD": "10000", "EUR": "10000", "BTC": "0.5", "ETH": "10"}
    )
    # Introducing brokers: how many levels of IBs above a client earn commission on
    # their trading (1: only the IB who referred them). Plans may not have more levels.
    ib_max_depth: int = Field(default=2, ge=1, le=5)

    # Trading fees in basis points of the notional, per tier: a maker (resting order)
    # and a taker (incoming order) rate. An order takes the default tier's rates when
    # it is accepted and keeps them. Each rate is 0 to 1000 (10%).
    trading_fee_tiers: Annotated[dict[str, dict[str, int]], NoDecode] = Field(
        default_factory=lambda: {"standard": {"maker_bps": 10, "taker_bps": 20}}
    )
    trading_default_fee_tier: str = "standard"

    # The matcher (docs/decisions/0027-matcher-per-instrument-shard.md): a thread of the
    # API process ("in-process", the embedded default), or its own processes ("external":
    # `bourse matcher`, the production Deployment). Instruments are spread over
    # matcher_shards shards, each with one leader.
    matcher: Literal["in-process", "external"] = "in-process"
    matcher_shards: int = Field(default=1, ge=1, le=256)
    matcher_batch_size: int = Field(default=200, ge=1, le=5000)
    # How long POST and DELETE /orders wait for the matcher's outcome before answering
    # 202 with the order still pending.
    order_wait_ms: int = Field(default=1000, ge=0, le=30_000)
    # PostgreSQL reached directly, not through a transaction pooler, for what needs a
    # session of its own: the matcher's leadership lock and LISTEN. Defaults to
    # database_url (which must then not be pooled for those).
    database_direct_url: str | None = None
    # The market-data WebSocket (/api/v1/ws; docs/decisions/0028-stream-process.md): served
    # by every API process, which also runs the Redis subscriber that feeds it
    # ("in-process", the embedded default), or only by `bourse stream` processes
    # ("external", production), so that order entry spends no CPU on the fan-out. The API
    # still publishes what its in-process matcher commits. External needs Redis.
    stream: Literal["in-process", "external"] = "in-process"

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    max_body_bytes: PositiveInt = 1024 * 1024
    # The proxies whose X-Forwarded-For the server believes (addresses or networks):
    # loopback by default, the layout of an nginx sidecar; empty believes nobody.
    forwarded_allow_ips: Annotated[tuple[str, ...], NoDecode] = ("127.0.0.1", "::1")
    # Overload (docs/decisions/0012-overload.md): API requests served at once beyond
    # which new ones get 503 overloaded, and how long the worker threads may go
    # without making progress before /livez fails.
    http_max_in_flight: int = Field(default=100, ge=1, le=10_000)
    server_workers: int = Field(default=1, ge=1, le=64)
    liveness_stall_seconds: float = Field(default=20.0, ge=2, le=600)
    readiness_timeout_seconds: PositiveFloat = 1.0
    shutdown_drain_seconds: float = Field(default=5.0, ge=0)
    shutdown_timeout_seconds: PositiveInt = 20

    # Queue and scheduler (docs/decisions/0006-queue.md). "database" keeps jobs in the
    # queue_jobs table (SQLite or PostgreSQL); "redis" relays committed rows of that
    # table (the outbox) into Redis. A reserved job whose worker vanished becomes
    # available again after queue_retry_after_seconds, which must exceed every job's
    # timeout (the worker refuses to start otherwise).
    queue_driver: Literal["database", "redis"] = "database"
    queue_retry_after_seconds: PositiveInt = 150
    queue_redis_prefix: str = Field(default="bourse:", pattern=r"^[A-Za-z0-9:._{}-]{1,64}$")
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    scheduler_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Heartbeat files for `bourse healthcheck --worker/--scheduler` (exec probes): the
    # process touches its file every few seconds; a file older than the max age fails.
    worker_heartbeat_path: Path = Path("./var/worker.heartbeat")
    scheduler_heartbeat_path: Path = Path("./var/scheduler.heartbeat")
    matcher_heartbeat_path: Path = Path("./var/matcher.heartbeat")
    heartbeat_max_age_seconds: PositiveFloat = 30.0

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - no .env files: env, secrets dirs, defaults
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - replaced by SecretsDirsSource
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # An unknown BOURSE_ name is refused wherever it is set; every such problem,
        # from the environment and from the files, is reported in one go.
        known = frozenset(env_name(name) for name in settings_cls.model_fields)
        problems = unknown_environment_problems(os.environ, known)
        try:
            files = SecretsDirsSource(settings_cls)
        except SettingsError as exc:
            raise SettingsError([*problems, *exc.problems]) from None
        if problems:
            raise SettingsError(problems)
        return (init_settings, env_settings, files)

    @field_validator("secrets_dirs", mode="before")
    @classmethod
    def _split_secrets_dirs(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(split_dirs(value))
        return value

    @field_validator(
        "withdrawal_daily_limits",
        "withdrawal_review_above",
        "withdrawal_two_approvals_above",
        "trading_fee_tiers",
        mode="before",
    )
    @classmethod
    def _decode_json(cls, value: object) -> object:
        # Decoded here rather than by the environment source, so that a value from a
        # secrets file is read the same way, and bad JSON is a problem naming the
        # setting, not a traceback.
        if isinstance(value, str):
            try:
                return json.loads(value)
            except (ValueError, RecursionError):
                raise ValueError("is not valid JSON") from None
        return value

    @field_validator("psp_connectors", mode="before")
    @classmethod
    def _split_connectors(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("psp_connectors")
    @classmethod
    def _check_connectors(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(PSP_CONNECTOR_NAMES))
        if unknown:
            raise ValueError(f"unknown connector(s) {', '.join(unknown)}; known: {', '.join(PSP_CONNECTOR_NAMES)}")
        if len(set(value)) != len(value):
            raise ValueError("a connector is listed twice")
        return value

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _split_forwarded_allow_ips(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",")) if value.strip() else ()
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _check_forwarded_allow_ips(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if item == "*":
                raise ValueError("'*' would let every client choose its own address; list the proxies")
            try:
                if "/" in item:
                    ipaddress.ip_network(item)
                else:
                    ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network (such as 10.0.0.0/8)") from None
        return value

    @field_validator("trading_fee_tiers")
    @classmethod
    def _check_fee_tiers(cls, value: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        if not value:
            raise ValueError("at least one fee tier is needed")
        for tier, rates in value.items():
            if set(rates) != {"maker_bps", "taker_bps"}:
                raise ValueError(f"tier {tier!r} needs exactly maker_bps and taker_bps")
            for name, bps in rates.items():
                if isinstance(bps, bool) or not 0 <= bps <= MAX_FEE_BPS:
                    raise ValueError(f"{tier}.{name} is 0 to {MAX_FEE_BPS} basis points, not {bps!r}")
        return value

    @model_validator(mode="after")
    def _check_default_fee_tier(self) -> Settings:
        if self.trading_default_fee_tier not in self.trading_fee_tiers:
            raise ValueError(
                f"trading_default_fee_tier {self.trading_default_fee_tier!r} is not one of the trading_fee_tiers"
            )
        return self

    @field_validator("psp_sim_url", "public_url")
    @classmethod
    def _check_http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        try:
            urlsplit(value).port  # noqa: B018 - parsed only to refuse a bad port or IPv6 address
        except ValueError:
            raise ValueError("must be an http:// or https:// URL with a valid host and port") from None
        return value.rstrip("/")

    @field_validator("stripe_api_base")
    @classmethod
    def _check_stripe_api_base(cls, value: str) -> str:
        return check_api_base(value)

    @field_validator("withdrawal_daily_limits", "withdrawal_review_above", "withdrawal_two_approvals_above")
    @classmethod
    def _check_asset_amounts(cls, value: dict[str, str]) -> dict[str, str]:
        for code, amount in value.items():
            if not re.match(r"^[A-Z0-9]{1,12}$", code):
                raise ValueError(f"{code!r} is not an asset code")
            if not isinstance(amount, str) or not re.match(r"^\d{1,15}(\.\d{1,8})?$", amount):
                raise ValueError(f'{code}: {amount!r} must be a non-negative decimal string such as "1000.00"')
        return value

    @model_validator(mode="after")
    def _check_stripe(self) -> Settings:
        if "stripe" in self.psp_connectors and (self.stripe_api_key is None or self.stripe_webhook_secret is None):
            raise ValueError(
                "BOURSE_PSP_CONNECTORS: the stripe connector needs BOURSE_STRIPE_API_KEY and"
                " BOURSE_STRIPE_WEBHOOK_SECRET"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        normalise_database_url(value)
        return value

    @field_validator("database_direct_url")
    @classmethod
    def _check_database_direct_url(cls, value: str | None) -> str | None:
        if value is not None:
            normalise_database_url(value)
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("jwt_previous_keys")
    @classmethod
    def _check_previous_jwt_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_previous_jwt_keys(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _check_jwt_key_ids(self) -> Settings:
        if self.jwt_key_id in self.previous_jwt_keys:
            raise ValueError("BOURSE_JWT_PREVIOUS_KEYS: names the current BOURSE_JWT_KEY_ID; retired keys only")
        return self

    @model_validator(mode="after")
    def _check_queue_driver(self) -> Settings:
        if self.queue_driver == "redis" and self.redis_url is None:
            raise ValueError("BOURSE_QUEUE_DRIVER: the redis driver needs BOURSE_REDIS_URL")
        return self

    @model_validator(mode="after")
    def _check_production(self) -> Settings:
        if self.env != "production":
            return self
        problems: list[str] = []
        for name in ("jwt_secret", "psp_api_key", "psp_secret", "totp_key"):
            secret: SecretStr = getattr(self, name)
            value = secret.get_secret_value()
            label = env_name(name)
            if not value.strip():
                problems.append(f"{label}: is missing or empty, required in production")
            elif value.strip().lower() in KNOWN_DEFAULT_SECRETS:
                problems.append(f"{label}: is a known default value, set a real secret in production")
        jwt = self.jwt_secret.get_secret_value()
        if jwt.strip() and len(jwt) < MIN_JWT_SECRET_LENGTH:
            problems.append(f"BOURSE_JWT_SECRET: must be at least {MIN_JWT_SECRET_LENGTH} characters in production")
        totp_key = self.totp_key.get_secret_value()
        if totp_key.strip() and len(totp_key) < MIN_JWT_SECRET_LENGTH:
            problems.append(f"BOURSE_TOTP_KEY: must be at least {MIN_JWT_SECRET_LENGTH} characters in production")
        for kid, previous in self.previous_jwt_keys.items():
            if len(previous) < MIN_JWT_SECRET_LENGTH or previous.strip().lower() in KNOWN_DEFAULT_SECRETS:
                problems.append(
                    f"BOURSE_JWT_PREVIOUS_KEYS: the key {kid!r} must be a real secret of at least "
                    f"{MIN_JWT_SECRET_LENGTH} characters in production"
                )
        if self.database.get_backend_name() != "postgresql":
            problems.append("BOURSE_DATABASE_URL: production requires PostgreSQL")
        if urlsplit(self.stripe_api_base).scheme != "https":
            problems.append("BOURSE_STRIPE_API_BASE: must be an https:// URL in production")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # URLs are plain strings but may carry a password: mask it like a SecretStr.
        for name, value in super().__repr_args__():
            if name in {"database_url", "database_direct_url"} and isinstance(value, str):
                yield name, mask_database_url(value)
            elif name == "redis_url" and isinstance(value, str):
                yield name, mask_redis_url(value)
            else:
                yield name, value

    @property
    def database(self) -> URL:
        """The database URL with its driver pinned and the password secret applied."""
        url = normalise_database_url(self.database_url)
        if self.database_password is not None:
            url = url.set(password=self.database_password.get_secret_value())
        return url

    @property
    def direct_database(self) -> URL | None:
        """The URL for session features (``database_direct_url``, else ``database_url``
        unless that leads to a transaction pooler); None if there is none."""
        if self.database_direct_url is None:
            return None if self.database_transaction_pooling else self.database
        url = normalise_database_url(self.database_direct_url)
        if self.database_password is not None and url.password is None:
            url = url.set(password=self.database_password.get_secret_value())
        return url

    @property
    def previous_jwt_keys(self) -> dict[str, str]:
        """Retired JWT signing keys still accepted for verification, by key id."""
        if self.jwt_previous_keys is None:
            return {}
        return parse_previous_jwt_keys(self.jwt_previous_keys.get_secret_value())

    @property
    def is_sqlite(self) -> bool:
        return self.database.get_backend_name() == "sqlite"


def _format_validation_error(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = error.get("loc", ())
        message = str(error.get("msg", "invalid value"))
        message = message.removeprefix("Value error, ")
        if loc:
            problems.append(f"{env_name(str(loc[0]))}: {message}")
        else:
            # Model-level checks already name their settings, one per line.
            problems.extend(message.splitlines())
    return problems


def load_settings(**overrides: Any) -> Settings:
    """Build :class:`Settings`, turning every failure into a :class:`SettingsError`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_format_validation_error(exc)) from None
