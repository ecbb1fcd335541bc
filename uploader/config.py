"""Configuration: one YAML file loaded once into frozen dataclasses, then passed down.

The dataclasses below are the schema: each field carries its default and, in its
metadata, its constraint. One generic walker checks every key against them, so a new
setting is one line and every error names its dotted key. Only this module reads the
settings file and the environment; the rest of the package receives plain values.
"""
import dataclasses
import difflib
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

import yaml

from .errors import ConfigError


def _is_http_url(value):
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$", re.IGNORECASE)


def _is_loopback(host):
    """True for an address or name only this machine reaches (not 0.0.0.0: that is every
    interface)."""
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_host_pattern(value):
    """A hostname, ``*.suffix`` (any subdomain), an IP address or a CIDR network."""
    try:
        ipaddress.ip_network(value)
        return True
    except ValueError:
        pass
    labels = value[2:].split(".") if value.startswith("*.") else value.split(".")
    return (len(value) <= 253 and not labels[-1].isdigit()
            and all(_HOST_LABEL.match(label) for label in labels))


# A check is (predicate, what the value should be); the description goes into errors.
POSITIVE_INT = (lambda v: v >= 1, "a positive integer")
NON_NEGATIVE_INT = (lambda v: v >= 0, "a non-negative integer")
PORT = (lambda v: 0 <= v <= 65535, "a port number from 0 to 65535")
POSITIVE = (lambda v: v > 0, "a positive number")
NON_NEGATIVE = (lambda v: v >= 0, "a non-negative number")
NON_EMPTY = (bool, "a non-empty string")
HTTP_URL = (_is_http_url, "an http(s) URL")
OPTIONAL_URL = (lambda v: v == "" or _is_http_url(v), 'an http(s) URL or ""')
HOST_PATTERN = (_is_host_pattern, "a hostname, *.suffix, IP address or CIDR network")
MIN_API_KEY_LENGTH = 16


def _api_key_problem(value):
    """What is wrong with an API key, or '' (never the key itself: it is a secret)."""
    if len(value) < MIN_API_KEY_LENGTH:
        return (f"too short: {len(value)} characters, and an API key needs at least "
                f"{MIN_API_KEY_LENGTH}")
    if " " in value or "," in value:
        return "contains a space or a comma, which separate keys"
    if not value.isprintable():
        return "contains a character that is not printable"
    return ""


# A check may have a third part: what is wrong with a value it refuses, without showing it.
API_KEY = (lambda v: not _api_key_problem(v),
           "an API key of at least 16 printable characters, without spaces or commas",
           _api_key_problem)


def _one_of(*choices):
    return (lambda v: v in choices, "one of " + ", ".join(choices))


def _opt(default, check=None, *, secret=False, normalize=None, shown=None):
    """A setting: its default, its check, whether to hide it (or ``shown``: how to print it
    with its secret part hidden), how to normalise it. A secret is left out of ``repr``."""
    return field(default=default, repr=not secret,
                 metadata={"check": check, "secret": secret, "normalize": normalize,
                           "shown": shown})


def _section(cls):
    """A nested section whose defaults are its own class's."""
    return field(default_factory=cls)


@dataclass(frozen=True)
class ServerConfig:
    """The HTTP API: where it listens and how much one request may ask."""

    host: str = _opt("0.0.0.0", NON_EMPTY)
    port: int = _opt(8000, PORT)
    max_urls_per_job: int = _opt(1000, POSITIVE_INT)
    max_body_bytes: int = _opt(1048576, POSITIVE_INT)
    header_timeout_seconds: float = _opt(10.0, POSITIVE)
    body_timeout_seconds: float = _opt(60.0, POSITIVE)
    public_url: str = _opt("", OPTIONAL_URL)
    api_keys: tuple[str, ...] = _opt((), API_KEY, secret=True)
    max_queued_urls_per_key: int = _opt(0, NON_NEGATIVE_INT)

    @property
    def base_url(self):
        """Where links to locally hosted images point."""
        return self.public_url.rstrip("/") or f"http://localhost:{self.port}"


@dataclass(frozen=True)
class WorkersConfig:
    """The pool of worker processes and how long they get to finish on shutdown."""

    processes: int = _opt(4, POSITIVE_INT)
    uploads_per_process: int = _opt(8, POSITIVE_INT)
    fetch_ahead: int = _opt(8, NON_NEGATIVE_INT)
    shutdown_grace_seconds: float = _opt(10.0, NON_NEGATIVE)
    exit_on_url_containing: str = _opt("")
    nice: int = _opt(5, (lambda v: 0 <= v <= 19, "a niceness from 0 to 19"))


@dataclass(frozen=True)
class RateLimitConfig:
    """One token bucket shared by all workers; ``uploads_per_second`` 0 means unlimited."""

    uploads_per_second: float = _opt(1.0, NON_NEGATIVE)
    burst: int = _opt(5, POSITIVE_INT)


@dataclass(frozen=True)
class ReserveConfig:
    """Credits kept back from Imgur's reported budgets, so we stop before Imgur stops us."""

    user: int = _opt(10, NON_NEGATIVE_INT)
    client: int = _opt(100, NON_NEGATIVE_INT)
    post: int = _opt(5, NON_NEGATIVE_INT)


@dataclass(frozen=True)
class BackoffConfig:
    """Exponential backoff between attempts at a retryable upload."""

    base_seconds: float = _opt(1.0, POSITIVE)
    max_seconds: float = _opt(60.0, POSITIVE)


@dataclass(frozen=True)
class ImgurConfig:
    """The Imgur API, its credentials (secrets) and how hard we may push it."""

    api_url: str = _opt("https://api.imgur.com", HTTP_URL)
    access_token: str = _opt("", secret=True)
    client_id: str = _opt("", secret=True)
    client_secret: str = _opt("", secret=True)
    refresh_token: str = _opt("", secret=True)
    timeout_seconds: float = _opt(30.0, POSITIVE)
    rate_limit: RateLimitConfig = _section(RateLimitConfig)
    reserve: ReserveConfig = _section(ReserveConfig)
    max_attempts: int = _opt(5, POSITIVE_INT)
    backoff: BackoffConfig = _section(BackoffConfig)
    dedup: bool = _opt(True)


@dataclass(frozen=True)
class WebhookBackoffConfig:
    """Exponential backoff, with full jitter, between attempts at a webhook delivery."""

    base_seconds: float = _opt(1.0, POSITIVE)
    max_seconds: float = _opt(300.0, POSITIVE)


@dataclass(frozen=True)
class WebhooksConfig:
    """Completion webhooks: signed with ``secret`` when set, retried until delivered."""

    secret: str = _opt("", secret=True)
    max_attempts: int = _opt(8, POSITIVE_INT)
    timeout_seconds: float = _opt(10.0, POSITIVE)
    concurrency: int = _opt(8, POSITIVE_INT)
    backoff: WebhookBackoffConfig = _section(WebhookBackoffConfig)


@dataclass(frozen=True)
class LocalConfig:
    """The local image store, used when there is no Imgur credential."""

    directory: str = _opt("data/images", NON_EMPTY)


_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")  # lenient: some stores
BUCKET_NAME = (lambda v: v == "" or bool(_BUCKET.match(v)),  # allow capitals and underscores
               'a bucket name (3-63 letters, digits, dots, hyphens, underscores) or ""')
KEY_PREFIX = (lambda v: not v.startswith("/") and v.isprintable() and len(v) <= 512,
              "a key prefix such as images/ (printable, not starting with /)")


@dataclass(frozen=True)
class S3Config:
    """S3-compatible object storage (AWS S3, R2, B2, Spaces, Ceph, Garage, SeaweedFS).

    Empty keys leave boto3's own chain to find credentials (env AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY with AWS_SESSION_TOKEN, the shared credentials file, an instance
    role); keys given here win over them. ``public_url`` empty is derived: ``link_base``."""

    bucket: str = _opt("", BUCKET_NAME)
    endpoint_url: str = _opt("", OPTIONAL_URL)
    region: str = _opt("us-east-1", NON_EMPTY)
    prefix: str = _opt("", KEY_PREFIX)
    public_url: str = _opt("", OPTIONAL_URL)
    addressing_style: str = _opt("auto", _one_of("auto", "path", "virtual"))
    access_key_id: str = _opt("", secret=True)
    secret_access_key: str = _opt("", secret=True)

    @property
    def link_base(self):
        """Where links point (no trailing slash): ``public_url``; else, with an endpoint,
        the bucket in path style on it; else the bucket's own AWS address."""
        if self.public_url:
            return self.public_url.rstrip("/")
        if self.endpoint_url:
            return f"{self.endpoint_url.rstrip('/')}/{self.bucket}"
        return f"https://{self.bucket}.s3.{self.region}.amazonaws.com"


@dataclass(frozen=True)
class FetchConfig:
    """Limits on downloading source images; host lists take names, ``*.suffix``, IPs or CIDRs.

    ``private_hosts_allowed`` exempts hosts from the private-address refusal;
    ``only_hosts``, when not empty, is the only hosts fetched at all; ``denied_hosts``
    wins over both. ``allowed_hosts`` is the old name of ``private_hosts_allowed``: still
    read (its entries join that list) and reported by ``deprecations``.
    """

    timeout_seconds: float = _opt(15.0, POSITIVE)
    max_bytes: int = _opt(20971520, POSITIVE_INT)
    max_redirects: int = _opt(5, NON_NEGATIVE_INT)
    retries: int = _opt(2, NON_NEGATIVE_INT)
    allow_private_networks: bool = _opt(False)
    private_hosts_allowed: tuple[str, ...] = _opt((), HOST_PATTERN, normalize=str.lower)
    only_hosts: tuple[str, ...] = _opt((), HOST_PATTERN, normalize=str.lower)
    denied_hosts: tuple[str, ...] = _opt((), HOST_PATTERN, normalize=str.lower)
    allowed_hosts: tuple[str, ...] = _opt((), HOST_PATTERN, normalize=str.lower)  # deprecated

    def __post_init__(self):
        if self.allowed_hosts:  # idempotent, so dataclasses.replace keeps it right
            merged = tuple(dict.fromkeys(self.private_hosts_allowed + self.allowed_hosts))
            object.__setattr__(self, "private_hosts_allowed", merged)

    @property
    def deprecations(self):
        """Notes on deprecated keys this section was given, for a warning at start."""
        if not self.allowed_hosts:
            return []
        return ["fetch.allowed_hosts is deprecated: its entries are read as "
                "fetch.private_hosts_allowed (exempt from the private-address refusal); "
                "rename the key. fetch.only_hosts is the new allow-only list."]


@dataclass(frozen=True)
class ImagesConfig:
    """What is published: personal metadata stripped (the pixels untouched), a pixel limit."""

    strip_metadata: bool = _opt(True)
    max_pixels: int = _opt(100_000_000, POSITIVE_INT)


def _is_database_url(value):
    parts = urlsplit(value)
    return parts.scheme in ("postgresql", "postgres") and bool(parts.path.strip("/") or parts.hostname)


def redact_url_password(url):
    """A database URL fit to print: its password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return "***"
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{hostinfo}").geturl()


DATABASE_URL = (lambda v: v == "" or _is_database_url(v),
                'a postgresql://user:password@host:port/database URL or ""')


@dataclass(frozen=True)
class StorageConfig:
    """Where jobs, results, the queue and the shared state live.

    ``url`` empty: the embedded SQLite file at ``path`` (one instance). A PostgreSQL URL:
    everything shared lives there and any number of instances act as one service."""

    path: str = _opt("data/uploader.sqlite3", NON_EMPTY)
    url: str = _opt("", DATABASE_URL, shown=redact_url_password)
    lease_seconds: float = _opt(15.0, (lambda v: v >= 3, "a number of seconds, at least 3"))
    poll_seconds: float = _opt(2.0, POSITIVE)
    listen_url: str = _opt("", DATABASE_URL, shown=redact_url_password)
    read_connections: int = _opt(2, (lambda v: v >= 2, "an integer, at least 2 (a listing"
                                     " streamed to a slow client holds one)"))
    shared_connections: int = _opt(1, POSITIVE_INT)


@dataclass(frozen=True)
class RetentionConfig:
    """How long finished jobs are kept (with their URLs and settled deliveries; links stay)."""

    finished_jobs_seconds: float = _opt(2592000.0, NON_NEGATIVE)  # 0 keeps everything
    check_seconds: float = _opt(60.0, POSITIVE)


@dataclass(frozen=True)
class LoggingConfig:
    """Log level and line format."""

    level: str = _opt("INFO", _one_of("DEBUG", "INFO", "WARNING", "ERROR"), normalize=str.upper)
    format: str = _opt("text", _one_of("text", "json"))


@dataclass(frozen=True)
class Config:
    """The whole configuration; build it with ``load_config`` or ``config_from_dict``."""

    server: ServerConfig = _section(ServerConfig)
    workers: WorkersConfig = _section(WorkersConfig)
    image_host: str = _opt("auto", _one_of("auto", "imgur", "local", "s3"))
    imgur: ImgurConfig = _section(ImgurConfig)
    local: LocalConfig = _section(LocalConfig)
    s3: S3Config = _section(S3Config)
    fetch: FetchConfig = _section(FetchConfig)
    images: ImagesConfig = _section(ImagesConfig)
    webhooks: WebhooksConfig = _section(WebhooksConfig)
    storage: StorageConfig = _section(StorageConfig)
    retention: RetentionConfig = _section(RetentionConfig)
    logging: LoggingConfig = _section(LoggingConfig)

    @property
    def resolved_image_host(self):
        """``s3``, ``imgur`` or ``local``. ``auto`` picks s3 when a bucket is named (even
        beside Imgur credentials: a bucket is named only on purpose, while a token may be
        left in the environment), else Imgur when there is a credential to use."""
        if self.image_host != "auto":
            return self.image_host
        if self.s3.bucket:
            return "s3"
        return "imgur" if self.imgur_credentials else "local"

    @property
    def imgur_credentials(self):
        """True when an Imgur token or client id is configured."""
        return bool(self.imgur.access_token or self.imgur.client_id)

    def validate(self):
        """Check rules that span several keys (each key alone was checked on load)."""
        if self.image_host == "imgur" and not self.imgur_credentials:
            raise ConfigError("image_host: 'imgur' needs imgur.access_token or imgur.client_id"
                              " (or env ACCESS_TOKEN / IMGUR_CLIENT_ID)")
        if self.image_host == "s3" and not self.s3.bucket:
            raise ConfigError("image_host: 's3' needs s3.bucket, the bucket images are stored in")
        if bool(self.s3.access_key_id) != bool(self.s3.secret_access_key):
            raise ConfigError("s3.access_key_id: goes with s3.secret_access_key: set both,"
                              " or neither to let boto3 find credentials itself (env"
                              " AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws/credentials,"
                              " an instance role)")
        if self.imgur.backoff.max_seconds < self.imgur.backoff.base_seconds:
            raise ConfigError("imgur.backoff.max_seconds: must be >= imgur.backoff.base_seconds")

    @property
    def warnings(self):
        """What deserves a WARNING at start (and in ``--check-config``), one line each:
        deprecated keys, and an API open to anyone on a non-loopback address."""
        notes = list(self.fetch.deprecations)
        if not self.server.api_keys and not _is_loopback(self.server.host):
            notes.append(f"the API is open: server.api_keys is empty and the service listens "
                         f"on {self.server.host}, so anyone who can reach it may make jobs and "
                         "delete images; set server.api_keys (env UPLOADER_API_KEYS) or "
                         "server.host: 127.0.0.1")
        return notes

    def redacted(self):
        """The whole configuration as plain nested dicts, secrets shown as ``***``."""
        return _as_dict(self)


# Environment variables that override a key when set to a non-empty value.
ENV_OVERRIDES = {
    "ACCESS_TOKEN": "imgur.access_token",
    "IMGUR_CLIENT_ID": "imgur.client_id",
    "IMGUR_CLIENT_SECRET": "imgur.client_secret",
    "IMGUR_REFRESH_TOKEN": "imgur.refresh_token",
    "PORT": "server.port",
    "DATABASE_URL": "storage.url",
    "UPLOADER_API_KEYS": "server.api_keys",  # comma-separated
    "WEBHOOK_SECRET": "webhooks.secret",
}  # AWS_ACCESS_KEY_ID and the like are boto3's own: its chain reads them when s3.* keys are empty


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping, at any depth: YAML
    keeps the last silently, so a section written twice would lose all of the first."""

    MERGE = "tag:yaml.org,2002:merge"

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        first = {}
        for key, _value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == self.MERGE:
                continue
            earlier = first.setdefault((key.tag, key.value), key)
            if earlier is not key:
                raise yaml.composer.ComposerError(
                    None, None, f"duplicate key '{key.value}' (first at line "
                    f"{earlier.start_mark.line + 1}): YAML would keep only the last, so "
                    "merge the two", key.start_mark)
        return node


def load_config(path=None, *, environ=None):
    """Read ``path`` (None: built-in defaults only), apply the environment, validate."""
    if path is None:
        return config_from_dict({}, environ=environ, source="<defaults>")
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            data = yaml.load(f, Loader=UniqueKeyLoader)
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
    return config_from_dict(data, environ=environ, source=source)


def config_from_dict(data, *, environ=None, source="<dict>"):
    """Build a Config from nested dicts as ``yaml.safe_load`` returns them; same checks."""
    if data is not None and not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {kind}")
    config = _build(Config, data, source, "")
    environ = os.environ if environ is None else environ
    for var, dotted in ENV_OVERRIDES.items():
        raw = environ.get(var, "").strip()
        if raw:
            config = _override(config, dotted.split("."), raw, f"environment variable {var}")
    try:
        config.validate()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return config


_INVALID = object()


def _build(cls, data, source, prefix):
    """Make ``cls`` from a mapping: unknown keys rejected, missing keys defaulted."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix[:-1]}: expected a mapping, got {data!r}")
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}")
    hints = get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if f.name in data:
            dotted = prefix + f.name
            if dataclasses.is_dataclass(hints[f.name]):
                values[f.name] = _build(hints[f.name], data[f.name], source, dotted + ".")
            else:
                label = f"{source}: {dotted}"
                values[f.name] = _coerce(hints[f.name], data[f.name], label, f.metadata)
    return cls(**values)


def _coerce(tp, value, label, meta):
    """``value`` as type ``tp`` if it passes the field's check; else raise naming ``label``."""
    check = meta.get("check")
    if get_origin(tp) is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{label}: expected a list of strings, got {value!r}")
        item_type = get_args(tp)[0]
        return tuple(_coerce(item_type, item, f"{label}[{i}]", meta) for i, item in enumerate(value))
    typed = _typed(tp, value)
    if typed is not _INVALID and meta.get("normalize"):
        typed = meta["normalize"](typed)
    if typed is _INVALID or (check and not check[0](typed)):
        wanted = check[1] if check else _TYPE_NAMES[tp]
        if meta.get("secret") and typed is not _INVALID and len(check) > 2:
            raise ConfigError(f"{label}: {check[2](typed)} (the value is not shown)")
        if meta.get("secret"):
            shown = f"{_kind(value)} (the value is not shown)"
        elif meta.get("shown") and isinstance(value, str):
            shown = repr(meta["shown"](value))
        else:
            shown = repr(value)
        raise ConfigError(f"{label}: expected {wanted}, got {shown}")
    return typed


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _kind(value) -> str:
    """What a YAML value is, in the file's words: for a secret, shown instead of it."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true or false"
    return {int: "a number", float: "a number", str: "text", list: "a list",
            dict: "a mapping"}.get(type(value), "another kind of value")


def _typed(tp, value):
    if isinstance(value, bool) or tp is bool:
        return value if isinstance(value, bool) and tp is bool else _INVALID
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp is float and isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return value if isinstance(value, tp) else _INVALID


def _override(obj, path, raw, label):
    """Set the key at ``path`` to the environment string ``raw``, checked like a file value."""
    name, rest = path[0], path[1:]
    if rest:
        return dataclasses.replace(obj, **{name: _override(getattr(obj, name), rest, raw, label)})
    tp, meta = get_type_hints(type(obj))[name], obj.__dataclass_fields__[name].metadata
    value = int(raw) if tp is int and re.fullmatch(r"[+-]?\d+", raw) else raw
    if get_origin(tp) is tuple:  # a list from the environment: comma-separated
        value = [item.strip() for item in raw.split(",") if item.strip()]
        if not value:  # "," is a mistake, not a wish for none (for API keys: an open API)
            raise ConfigError(f"{label}: {raw!r} holds no entry, only commas and spaces; "
                              "unset the variable, or leave it empty, for none")
    return dataclasses.replace(obj, **{name: _coerce(tp, value, label, meta)})


def _as_dict(obj):
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = _as_dict(value)
        elif isinstance(value, tuple):
            value = ["***"] * len(value) if f.metadata.get("secret") else list(value)
        elif f.metadata.get("secret") and value:
            value = "***"
        elif f.metadata.get("shown") and value:
            value = f.metadata["shown"](value)
        out[f.name] = value
    return out
