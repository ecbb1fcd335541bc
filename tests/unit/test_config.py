"""Configuration: defaults, the shipped default file, environment overrides, and errors
that name the offending key."""
import dataclasses
import ipaddress

import pytest
import yaml

from uploader.config import (
    BackoffConfig, Config, ImgurConfig, RateLimitConfig, ReserveConfig, config_from_dict,
    load_config,
)
from uploader import imagetype
from uploader.errors import ConfigError, SourceRefused
from uploader.worker import build_fetcher

from tests.support import REPO

DEFAULT_YAML = REPO / "config" / "default.yaml"


def build(data, **environ):
    return config_from_dict(data, environ=environ)


def error_of(data, **environ):
    with pytest.raises(ConfigError) as info:
        build(data, **environ)
    return str(info.value)


def leaf_keys(mapping, prefix=""):
    keys = set()
    for key, value in mapping.items():
        if isinstance(value, dict):
            keys |= leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


def test_defaults():
    config = load_config(None, environ={})
    assert config.server.host == "0.0.0.0"
    assert config.server.port == 8000
    assert config.server.max_urls_per_job == 1000
    assert config.server.max_body_bytes == 1048576
    assert config.server.base_url == "http://localhost:8000"
    assert (config.workers.processes, config.workers.uploads_per_process) == (4, 8)
    assert config.workers.shutdown_grace_seconds == 10.0
    assert config.image_host == "auto"
    assert config.imgur.api_url == "https://api.imgur.com"
    assert config.imgur.rate_limit == RateLimitConfig(uploads_per_second=1.0, burst=5)
    assert config.imgur.reserve == ReserveConfig(user=10, client=100, post=5)
    assert config.imgur.backoff == BackoffConfig(base_seconds=1.0, max_seconds=60.0)
    assert config.imgur.max_attempts == 5 and config.imgur.dedup is True
    assert config.local.directory == "data/images"
    assert config.fetch.max_bytes == 20971520 and config.fetch.max_redirects == 5
    assert config.fetch.private_hosts_allowed == () and config.fetch.denied_hosts == ()
    assert config.fetch.only_hosts == () and config.fetch.allowed_hosts == ()
    assert config.fetch.allow_private_networks is False
    assert config.storage.path == "data/uploader.sqlite3"
    assert (config.logging.level, config.logging.format) == ("INFO", "text")
    assert config == Config()


def test_default_yaml_equals_built_in_defaults():
    assert load_config(DEFAULT_YAML, environ={}) == load_config(None, environ={})


def test_default_yaml_spells_out_every_key():
    """Every key but the deprecated alias, which the file mentions in a comment only."""
    written = yaml.safe_load(DEFAULT_YAML.read_text())
    assert leaf_keys(written) == leaf_keys(Config().redacted()) - {"fetch.allowed_hosts"}
    assert "allowed_hosts is still read" in DEFAULT_YAML.read_text()


def test_empty_file_and_null_sections_mean_defaults(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert load_config(empty, environ={}) == Config()
    assert build({"server": None, "imgur": {"rate_limit": None}}) == Config()


def test_values_override_defaults_and_lists_become_tuples():
    config = build({"server": {"port": 0, "public_url": "https://img.example.org/"},
                    "workers": {"shutdown_grace_seconds": 3},
                    "imgur": {"backoff": {"base_seconds": 2}},
                    "fetch": {"private_hosts_allowed": ["Example.COM", "*.cdn.net", "10.0.0.0/8", "::1"],
                              "only_hosts": ["CDN.example.org", "*.Img.example.org"]},
                    "logging": {"level": "debug", "format": "json"}})
    assert config.server.port == 0
    assert config.server.base_url == "https://img.example.org"
    assert config.workers.shutdown_grace_seconds == 3.0
    assert isinstance(config.workers.shutdown_grace_seconds, float)
    assert config.imgur.backoff.base_seconds == 2.0
    assert config.imgur.backoff.max_seconds == 60.0
    assert config.fetch.private_hosts_allowed == ("example.com", "*.cdn.net", "10.0.0.0/8", "::1")
    assert config.fetch.only_hosts == ("cdn.example.org", "*.img.example.org")
    assert config.logging.level == "DEBUG"


def test_old_allowed_hosts_still_work_as_private_hosts_allowed():
    # (bin/serve says the note once, at start: tests/system/test_startup.py)
    config = build({"fetch": {"allowed_hosts": ["Intranet.test", "10.0.0.0/8"],
                              "private_hosts_allowed": ["10.0.0.0/8", "wiki.test"]}})
    assert config.fetch.private_hosts_allowed == ("10.0.0.0/8", "wiki.test", "intranet.test")
    assert config.fetch.only_hosts == ()
    (note,) = config.fetch.deprecations
    assert "fetch.allowed_hosts is deprecated" in note and "fetch.private_hosts_allowed" in note
    again = dataclasses.replace(config.fetch, retries=0)  # the merge survives a copy unchanged
    assert again.private_hosts_allowed == config.fetch.private_hosts_allowed


def test_old_allowed_hosts_reach_the_fetcher():
    policy = build_fetcher(build({"fetch": {"allowed_hosts": ["intranet.test"]}})).policy
    policy.check_address(ipaddress.ip_address("10.1.1.1"), "intranet.test")
    policy.check_host("anything.test")  # still an exemption, never an allow-only list


def test_new_keys_reach_the_fetcher():
    policy = build_fetcher(build({"fetch": {"private_hosts_allowed": ["intranet.test"],
                                            "only_hosts": ["intranet.test"]}})).policy
    policy.check_address(ipaddress.ip_address("10.1.1.1"), "intranet.test")
    with pytest.raises(SourceRefused, match="not in the allow-list"):
        policy.check_host("anything.test")


def test_the_host_decides_the_formats_fetched_and_the_pixel_limit_reaches_the_fetcher():
    local = build_fetcher(build({"image_host": "local", "images": {"max_pixels": 1234}}))
    assert local.accepted_mimes == {"image/jpeg", "image/png", "image/gif", "image/tiff", "image/bmp",
                                    "image/webp"}  # browsers show WebP
    assert local.max_pixels == 1234
    imgur = build_fetcher(build({"image_host": "imgur", "imgur": {"client_id": "an-id"}}))
    assert imgur.accepted_mimes == imagetype.ACCEPTED_BY_IMGUR  # Imgur refuses WebP
    assert imgur.max_pixels == 100_000_000


def test_no_warning_without_the_old_key(caplog):
    with caplog.at_level("WARNING", logger="uploader.config"):
        load_config(DEFAULT_YAML, environ={})
    assert caplog.records == []


def test_integral_float_is_accepted_as_int():
    assert build({"workers": {"processes": 2.0}}).workers.processes == 2


@pytest.mark.parametrize("var, key", [
    ("ACCESS_TOKEN", "access_token"),
    ("IMGUR_CLIENT_ID", "client_id"),
    ("IMGUR_CLIENT_SECRET", "client_secret"),
    ("IMGUR_REFRESH_TOKEN", "refresh_token"),
])
def test_env_overrides_secret(var, key):
    config = build({"imgur": {key: "from-file"}}, **{var: "from-env"})
    assert getattr(config.imgur, key) == "from-env"


@pytest.mark.parametrize("var", ["ACCESS_TOKEN", "IMGUR_CLIENT_ID", "PORT"])
def test_empty_env_value_does_not_override(var):
    config = build({"imgur": {"access_token": "t", "client_id": "c"}}, **{var: ""})
    assert config.imgur.access_token == "t" and config.imgur.client_id == "c"
    assert config.server.port == 8000


def test_env_port_overrides():
    assert build({"server": {"port": 9000}}, PORT="8123").server.port == 8123
    assert build({}, PORT=" 0 ").server.port == 0


@pytest.mark.parametrize("port", ["abc", "80.5", "65536", "-1", "0x50"])
def test_bad_env_port_names_port(port):
    message = error_of({}, PORT=port)
    assert "PORT" in message and "server.port" not in message
    assert message.startswith("environment variable PORT: expected a port number")
    assert port in message


def test_load_config_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("ACCESS_TOKEN", "env-token")
    assert load_config(None).imgur.access_token == "env-token"


def test_unknown_key_suggests_the_close_one():
    assert error_of({"server": {"prot": 1}}) == (
        "<dict>: unknown key 'server.prot' (did you mean 'server.port'?)")
    assert "did you mean 'imgur'" in error_of({"imgru": {}})
    assert "unknown key 'imgur.rate_limit.bursts'" in error_of({"imgur": {"rate_limit": {"bursts": 1}}})
    assert "did you mean" not in error_of({"zzz": 1})


def test_error_names_the_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("workers:\n  processes: four\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value) == f"{path}: workers.processes: expected a positive integer, got 'four'"


@pytest.mark.parametrize("data, key", [
    ({"server": {"host": ""}}, "server.host"),
    ({"server": {"host": 5}}, "server.host"),
    ({"server": {"port": 65536}}, "server.port"),
    ({"server": {"port": -1}}, "server.port"),
    ({"server": {"port": "8000"}}, "server.port"),
    ({"server": {"port": True}}, "server.port"),
    ({"server": {"port": 80.5}}, "server.port"),
    ({"server": {"max_urls_per_job": 0}}, "server.max_urls_per_job"),
    ({"server": {"max_body_bytes": None}}, "server.max_body_bytes"),
    ({"server": {"public_url": "img.example.org"}}, "server.public_url"),
    ({"server": []}, "server"),
    ({"workers": {"processes": "four"}}, "workers.processes"),
    ({"workers": {"processes": 0}}, "workers.processes"),
    ({"workers": {"uploads_per_process": 1.5}}, "workers.uploads_per_process"),
    ({"workers": {"shutdown_grace_seconds": -1}}, "workers.shutdown_grace_seconds"),
    ({"workers": {"shutdown_grace_seconds": float("nan")}}, "workers.shutdown_grace_seconds"),
    ({"image_host": "flickr"}, "image_host"),
    ({"imgur": {"api_url": "ftp://api.imgur.com"}}, "imgur.api_url"),
    ({"imgur": {"api_url": "api.imgur.com"}}, "imgur.api_url"),
    ({"imgur": {"access_token": 1234}}, "imgur.access_token"),
    ({"imgur": {"timeout_seconds": 0}}, "imgur.timeout_seconds"),
    ({"imgur": {"timeout_seconds": "30s"}}, "imgur.timeout_seconds"),
    ({"imgur": {"rate_limit": {"uploads_per_second": -0.5}}}, "imgur.rate_limit.uploads_per_second"),
    ({"imgur": {"rate_limit": {"burst": 0}}}, "imgur.rate_limit.burst"),
    ({"imgur": {"rate_limit": 5}}, "imgur.rate_limit"),
    ({"imgur": {"reserve": {"user": -1}}}, "imgur.reserve.user"),
    ({"imgur": {"reserve": {"post": "5"}}}, "imgur.reserve.post"),
    ({"imgur": {"max_attempts": 0}}, "imgur.max_attempts"),
    ({"imgur": {"backoff": {"base_seconds": 0}}}, "imgur.backoff.base_seconds"),
    ({"imgur": {"backoff": {"base_seconds": 10, "max_seconds": 5}}}, "imgur.backoff.max_seconds"),
    ({"imgur": {"dedup": "yes"}}, "imgur.dedup"),
    ({"imgur": {"dedup": 1}}, "imgur.dedup"),
    ({"local": {"directory": ""}}, "local.directory"),
    ({"fetch": {"timeout_seconds": False}}, "fetch.timeout_seconds"),
    ({"fetch": {"max_bytes": 0}}, "fetch.max_bytes"),
    ({"fetch": {"max_redirects": -1}}, "fetch.max_redirects"),
    ({"fetch": {"allow_private_networks": "no"}}, "fetch.allow_private_networks"),
    ({"fetch": {"allowed_hosts": "example.com"}}, "fetch.allowed_hosts"),
    ({"fetch": {"allowed_hosts": ["ok.com", 5]}}, "fetch.allowed_hosts[1]"),
    ({"fetch": {"private_hosts_allowed": "example.com"}}, "fetch.private_hosts_allowed"),
    ({"fetch": {"private_hosts_allowed": ["ok.com", "a b"]}}, "fetch.private_hosts_allowed[1]"),
    ({"fetch": {"only_hosts": ["ok.com", None]}}, "fetch.only_hosts[1]"),
    ({"fetch": {"only_hosts": ["http://ok.com/"]}}, "fetch.only_hosts[0]"),
    ({"fetch": {"denied_hosts": ["bad host"]}}, "fetch.denied_hosts[0]"),
    ({"fetch": {"denied_hosts": ["10.0.0.1/8"]}}, "fetch.denied_hosts[0]"),
    ({"fetch": {"denied_hosts": ["300.1.1.1"]}}, "fetch.denied_hosts[0]"),
    ({"fetch": {"denied_hosts": ["*."]}}, "fetch.denied_hosts[0]"),
    ({"fetch": {"denied_hosts": ["-bad.com"]}}, "fetch.denied_hosts[0]"),
    ({"s3": {"bucket": "a/b"}}, "s3.bucket"),
    ({"s3": {"bucket": "ab"}}, "s3.bucket"),
    ({"s3": {"endpoint_url": "minio:9000"}}, "s3.endpoint_url"),
    ({"s3": {"public_url": "cdn.example.com/img"}}, "s3.public_url"),
    ({"s3": {"prefix": "/images/"}}, "s3.prefix"),
    ({"s3": {"region": ""}}, "s3.region"),
    ({"s3": {"addressing_style": "dns"}}, "s3.addressing_style"),
    ({"image_host": "s3"}, "image_host"),
    ({"s3": {"access_key_id": "AKIAEXAMPLE"}}, "s3.access_key_id"),
    ({"storage": {"path": None}}, "storage.path"),
    ({"logging": {"level": "TRACE"}}, "logging.level"),
    ({"logging": {"format": "xml"}}, "logging.format"),
])
def test_bad_value_names_the_dotted_key(data, key):
    message = error_of(data)
    assert message.startswith(f"<dict>: {key}: "), message
    assert "\n" not in message


def test_secret_values_are_not_echoed_in_errors():
    message = error_of({"imgur": {"client_secret": 987654321}})
    assert "987654321" not in message
    assert message.startswith("<dict>: imgur.client_secret: expected a string")


def test_bad_yaml_reports_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  port: 8000\n  host: [unclosed\nworkers: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message.startswith(f"{path}: invalid YAML at line ")
    assert "line 4" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_config(path, environ={})


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path, environ={})


@pytest.mark.parametrize("data, environ, host", [
    ({}, {}, "local"),
    ({"imgur": {"access_token": "t"}}, {}, "imgur"),
    ({"imgur": {"client_id": "c"}}, {}, "imgur"),
    ({}, {"ACCESS_TOKEN": "t"}, "imgur"),
    ({}, {"IMGUR_CLIENT_ID": "c"}, "imgur"),
    ({"imgur": {"client_secret": "s", "refresh_token": "r"}}, {}, "local"),
    ({"image_host": "local", "imgur": {"access_token": "t"}}, {}, "local"),
    ({"image_host": "imgur"}, {"IMGUR_CLIENT_ID": "c"}, "imgur"),
    ({"s3": {"bucket": "images"}}, {}, "s3"),
    ({"s3": {"bucket": "images"}, "imgur": {"access_token": "t"}}, {}, "s3"),  # s3 wins
    ({"s3": {"bucket": "images"}}, {"ACCESS_TOKEN": "t"}, "s3"),
    ({"image_host": "imgur", "s3": {"bucket": "images"}}, {"ACCESS_TOKEN": "t"}, "imgur"),
    ({"image_host": "local", "s3": {"bucket": "images"}}, {}, "local"),
])
def test_auto_host_resolution(data, environ, host):
    assert build(data, **environ).resolved_image_host == host


def test_explicit_imgur_without_credentials_names_image_host():
    assert error_of({"image_host": "imgur"}).startswith("<dict>: image_host: ")


def test_s3_without_a_bucket_says_what_is_missing():
    assert error_of({"image_host": "s3"}) == (
        "<dict>: image_host: 's3' needs s3.bucket, the bucket images are stored in")


@pytest.mark.parametrize("s3, base", [
    ({"bucket": "pics", "public_url": "https://cdn.example.com/img/"}, "https://cdn.example.com/img"),
    ({"bucket": "pics", "endpoint_url": "http://127.0.0.1:9000/"}, "http://127.0.0.1:9000/pics"),
    ({"bucket": "pics", "region": "eu-west-3"}, "https://pics.s3.eu-west-3.amazonaws.com"),
])
def test_s3_links_are_public_url_or_derived_from_endpoint_and_bucket(s3, base):
    assert build({"s3": s3}).s3.link_base == base


def test_s3_secrets_are_hidden_in_redacted_and_repr():
    config = build({"s3": {"bucket": "pics", "access_key_id": "AKIDSECRETLOOKING",
                           "secret_access_key": "s3cr3t-access-key"}})
    shown = config.redacted()["s3"]
    assert shown["access_key_id"] == shown["secret_access_key"] == "***"
    assert shown["bucket"] == "pics"
    assert "s3cr3t" not in repr(config) and "AKIDSECRET" not in repr(config)
    assert "s3cr3t" not in error_of({"s3": {"secret_access_key": ["s3cr3t"]}})


def test_redacted_hides_set_secrets_only():
    config = build({"imgur": {"client_id": "secret-id", "refresh_token": "secret-refresh"},
                    "fetch": {"denied_hosts": ["evil.com"]}}, ACCESS_TOKEN="secret-token")
    shown = config.redacted()
    assert shown["imgur"]["access_token"] == "***"
    assert shown["imgur"]["client_id"] == "***"
    assert shown["imgur"]["refresh_token"] == "***"
    assert shown["imgur"]["client_secret"] == ""
    assert shown["fetch"]["denied_hosts"] == ["evil.com"]
    assert shown["server"]["port"] == 8000
    assert "secret-" not in repr(shown)
    assert yaml.safe_load(yaml.safe_dump(shown)) == shown


def test_frozen():
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.port = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.image_host = "local"
    changed = dataclasses.replace(config, imgur=dataclasses.replace(config.imgur, dedup=False))
    assert changed.imgur.dedup is False and config.imgur.dedup is True
    assert isinstance(changed.imgur, ImgurConfig)
    assert hash(config) == hash(Config())


@pytest.mark.parametrize("text, key, line, first", [
    ("server:\n  host: 127.0.0.1\nworkers:\n  processes: 2\nserver:\n  port: 9000\n",
     "server", 5, 1),  # the host of the first section would be lost, and 0.0.0.0 bound
    ("fetch:\n  retries: 1\n  max_redirects: 2\n  retries: 3\n", "retries", 4, 2),
    ("imgur: {rate_limit: {burst: 2, burst: 3}}\n", "burst", 1, 1),
])
def test_a_key_given_twice_is_an_error_naming_it_and_its_line(tmp_path, text, key, line, first):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert f"invalid YAML at line {line}," in message
    assert f"duplicate key '{key}' (first at line {first})" in message


def test_a_merge_key_is_not_a_duplicate(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("fetch: &f\n  retries: 1\nwebhooks:\n  backoff: {base_seconds: 2}\n"
                    "imgur:\n  backoff:\n    <<: {base_seconds: 0.5, max_seconds: 9}\n"
                    "    base_seconds: 0.25\n")
    config = load_config(path, environ={})
    assert config.imgur.backoff == BackoffConfig(base_seconds=0.25, max_seconds=9)


def test_an_api_key_list_of_only_commas_from_the_environment_is_an_error():
    for raw in (",", " , ,"):
        message = error_of({}, UPLOADER_API_KEYS=raw)
        assert message.startswith("environment variable UPLOADER_API_KEYS: ")
        assert "holds no entry" in message
    assert build({}, UPLOADER_API_KEYS="  ").server.api_keys == ()  # blank: not set at all
    assert build({}, UPLOADER_API_KEYS="k" * 16 + ",").server.api_keys == ("k" * 16,)


def test_a_bad_api_key_says_what_is_wrong_without_showing_it_or_its_type():
    for data, env, wrong in [
            ({"server": {"api_keys": ["short-key-123"]}}, {}, "too short: 13 characters, and "
                                                              "an API key needs at least 16"),
            ({}, {"UPLOADER_API_KEYS": "long-enough-key-1,tiny"}, "too short: 4 characters"),
            ({"server": {"api_keys": ["has a space in it!!"]}}, {}, "contains a space or a comma"),
            ({"server": {"api_keys": ["tab\there-and-more-chars"]}}, {}, "not printable")]:
        message = error_of(data, **env)
        assert wrong in message, message
        assert "type" not in message and "str" not in message
        for key in ("short-key-123", "tiny", "has a space", "tab\there"):
            assert key not in message
    message = error_of({"server": {"api_keys": [1234567890123456789]}})
    assert "1234567890123456789" not in message and "got a number" in message


@pytest.mark.parametrize("host, keys, warned", [
    ("0.0.0.0", [], True), ("::", [], True), ("192.0.2.7", [], True),
    ("images.example", [], True), ("0.0.0.0", ["k" * 16], False),
    ("127.0.0.1", [], False), ("::1", [], False), ("localhost", [], False),
])
def test_an_open_api_on_a_non_loopback_address_is_a_warning(host, keys, warned):
    config = build({"server": {"host": host, "api_keys": keys}})
    notes = [note for note in config.warnings if note.startswith("the API is open")]
    assert bool(notes) == warned
    if warned:
        assert f"listens on {host}" in notes[0] and "server.api_keys" in notes[0]
