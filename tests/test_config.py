"""appliance/config.py: schema, defaults, paths, listeners and one-line errors."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import string
from pathlib import Path

import pytest

from appliance import i18n
from appliance.config import (
    SCHEMA,
    ConfigError,
    iter_options,
    load_config,
    parse_bind,
    parse_duration,
    parse_size,
    render_default_config,
)
from appliance.keys import generate_self_signed_cert

REPO = Path(__file__).resolve().parent.parent
K, M, G = 1024, 1024**2, 1024**3


@pytest.fixture(scope="session")
def cert_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("certs")
    generate_self_signed_cert(d / "cert.pem", d / "key.pem", "mail.example.test")
    return d / "cert.pem", d / "key.pem"


@pytest.fixture
def instance(tmp_path: Path, cert_pair: tuple[Path, Path]) -> Path:
    """A directory with tls/cert.pem and tls/key.pem, where appliance.toml goes."""
    (tmp_path / "tls").mkdir()
    shutil.copy(cert_pair[0], tmp_path / "tls" / "cert.pem")
    shutil.copy(cert_pair[1], tmp_path / "tls" / "key.pem")
    return tmp_path


@pytest.fixture(autouse=True)
def english(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("APPLIANCE_LANG", raising=False)
    i18n.set_language(None)
    yield
    i18n.set_language(None)


def write(directory: Path, text: str, name: str = "appliance.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert "Traceback" not in message
    assert message.startswith(f"{path}: "), message
    return message


# ---------------------------------------------------------------- sizes, durations, binds


@pytest.mark.parametrize(
    "text, expected",
    [("25M", 25 * M), ("2G", 2 * G), ("512K", 512 * K), ("512k", 512 * K), ("0", 0), ("100", 100),
     ("25MB", 25 * M), ("25MiB", 25 * M), ("10B", 10), (4096, 4096), (0, 0), (" 1G ", G)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["12Q", "-1", "", "M", "1.5M", "25 MX", -1, True, None, 1.5])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text, expected",
    [("30s", 30), ("5m", 300), ("4h", 14400), ("5d", 432000), ("1w", 604800), ("90", 90), (90, 90),
     ("1.5h", 5400), ("0.5s", 0.5), (2.5, 2.5), ("0", 0)],
)
def test_parse_duration(text, expected):
    value = parse_duration(text)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("text", ["5x", "-1", "", "s", "5M", "1h30m", -1, False, None])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    "text, expected",
    [("127.0.0.1:25", ("127.0.0.1", 25)), ("[::1]:2143", ("::1", 2143)), ("[::]:993", ("::", 993)),
     ("0.0.0.0:65535", ("0.0.0.0", 65535)), ("localhost:8080", ("localhost", 8080)),
     ("[0:0::1]:1", ("::1", 1))],
)
def test_parse_bind(text, expected):
    assert parse_bind(text) == expected


@pytest.mark.parametrize(
    "text, fragment",
    [("127.0.0.1", "missing port"), ("127.0.0.1:0", "out of range"), ("127.0.0.1:70000", "port 70000 out of range 1-65535"),
     ("::1:25", "brackets"), ("[::1]25", "invalid port"), ("[nope]:25", "invalid host"), ("999.1.1.1:25", "invalid host"),
     (":25", "invalid host"), ("a_b:25", "invalid host"), ("1.2.3.4:2x", "invalid port"), ("1.2.3.4:", "invalid port")],
)
def test_parse_bind_rejects(text, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_bind(text)


# ---------------------------------------------------------------- defaults and paths


def test_empty_file_gives_the_defaults(instance: Path):
    cfg = load_config(write(instance, ""))
    assert cfg.path == instance / "appliance.toml"
    assert cfg.base_dir == instance
    assert cfg.instance.name == "dev"
    assert cfg.instance.hostname == "mail.example.test"
    assert cfg.instance.dev is True
    assert cfg.instance.data_dir == instance
    assert cfg.instance.language == "en"
    assert cfg.storage.database_url == f"sqlite:///{instance / 'index.sqlite3'}"
    assert cfg.storage.mail_dir == instance / "mail"
    assert cfg.storage.keys_dir == instance / "keys"
    assert cfg.storage.master_key_file == instance / "keys" / "master.key"
    assert cfg.storage.fsync is True
    assert cfg.tls.cert_file == instance / "tls" / "cert.pem"
    assert cfg.tls.min_version == "TLSv1.2"
    assert cfg.smtp.max_message_size == 25 * M
    assert cfg.smtp.max_recipients == 100
    assert cfg.smtp.max_line_length == 4096
    assert cfg.smtp.max_header_size == 64 * K
    assert cfg.smtp.idle_timeout == 300
    assert cfg.imap.max_line_length == 64 * K
    assert cfg.imap.max_literal_size == 25 * M
    assert cfg.imap.idle_timeout == 1800
    assert cfg.auth.argon2_memory_cost_kib == 65536
    assert cfg.auth.login_cache_ttl == 3600
    assert cfg.auth.failure_delay == 2
    assert cfg.auth.lockout_time == 900
    assert cfg.dns.resolvers == ()
    assert cfg.dns.timeout == 5
    assert cfg.queue.max_lifetime == 5 * 86400
    assert cfg.queue.smarthost == "" and cfg.queue.smarthost_password_file is None
    assert cfg.antispam.on_failure == "accept"
    assert cfg.limits.outbound_recipients_per_hour == 2000
    assert cfg.log.retention == 180 * 86400
    assert cfg.log.level == "info"
    assert cfg.uses_tls


def test_default_listeners(instance: Path):
    cfg = load_config(write(instance, ""))
    got = {n: (lst.protocol, lst.bind, lst.tls) for n, lst in cfg.listeners.items()}
    assert got == {
        "mx": ("smtp", "127.0.0.1:2525", "starttls"),
        "submission": ("submission", "127.0.0.1:2587", "starttls"),
        "submissions": ("submission", "127.0.0.1:2465", "implicit"),
        "imap": ("imap", "127.0.0.1:2143", "starttls"),
        "imaps": ("imap", "127.0.0.1:2993", "implicit"),
        "pop3": ("pop3", "127.0.0.1:2110", "starttls"),
        "pop3s": ("pop3", "127.0.0.1:2995", "implicit"),
        "panel": ("http", "127.0.0.1:8080", "none"),
    }
    imaps = cfg.listeners["imaps"]
    assert (imaps.name, imaps.host, imaps.port) == ("imaps", "127.0.0.1", 2993)


def test_config_is_read_only(instance: Path):
    cfg = load_config(write(instance, ""))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.smtp.max_recipients = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.path = Path("/")
    with pytest.raises(TypeError):
        cfg.listeners["x"] = cfg.listeners["mx"]
    with pytest.raises(AttributeError):
        _ = cfg.nosuchsection
    assert cfg.get("smtp.max_message_size") == 25 * M
    assert cfg.get("listeners.imap.port") == 2143


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path, cert_pair, monkeypatch):
    etc = tmp_path / "etc"
    (etc / "certs").mkdir(parents=True)
    shutil.copy(cert_pair[0], etc / "certs" / "c.pem")
    shutil.copy(cert_pair[1], etc / "certs" / "k.pem")
    (tmp_path / "var" / "data").mkdir(parents=True)
    write(etc, """
[instance]
data_dir = "../var/data"
[storage]
mail_dir = "store/mail"
keys_dir = "/srv/keys"
database_url = "sqlite:///db/index.sqlite3"
[tls]
cert_file = "certs/c.pem"
key_file = "certs/k.pem"
""")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(os.path.relpath(etc / "appliance.toml"))
    assert cfg.path == etc / "appliance.toml"
    assert cfg.base_dir == etc
    assert cfg.instance.data_dir == tmp_path / "var" / "data"
    assert cfg.storage.mail_dir == tmp_path / "var" / "data" / "store" / "mail"
    assert cfg.storage.keys_dir == Path("/srv/keys")
    assert cfg.storage.master_key_file == tmp_path / "var" / "data" / "keys" / "master.key"
    assert cfg.storage.database_url == f"sqlite:///{tmp_path / 'var' / 'data' / 'db' / 'index.sqlite3'}"
    assert cfg.tls.cert_file == etc / "certs" / "c.pem"


@pytest.mark.parametrize("url", ["postgresql+psycopg://mail@db/mail", "sqlite://", "sqlite:////abs/x.db"])
def test_database_url_kept(instance: Path, url: str):
    cfg = load_config(write(instance, f'[storage]\ndatabase_url = "{url}"\n'))
    assert cfg.storage.database_url == url


# ---------------------------------------------------------------- listeners

NO_TLS = """
[listeners.mx]
protocol = "smtp"
bind = "127.0.0.1:2525"
tls = "none"
"""


def test_listeners_replace_the_defaults_and_take_ipv6(instance: Path):
    cfg = load_config(write(instance, """
[listeners.imaps]
protocol = "imap"
bind = "[::1]:993"
tls = "implicit"

[listeners.mx]
protocol = "smtp"
bind = "0.0.0.0:25"
tls = "starttls"

[listeners.mx6]
protocol = "smtp"
bind = "[2001:db8::1]:25"
tls = "starttls"
"""))
    assert list(cfg.listeners) == ["imaps", "mx", "mx6"]
    imaps = cfg.listeners["imaps"]
    assert (imaps.protocol, imaps.host, imaps.port, imaps.tls) == ("imap", "::1", 993, "implicit")
    assert imaps.bind == "[::1]:993"
    assert cfg.listeners["mx6"].host == "2001:db8::1"


def test_no_tls_listener_needs_no_certificate(tmp_path: Path):
    cfg = load_config(write(tmp_path, NO_TLS))
    assert not cfg.uses_tls
    assert not cfg.tls.cert_file.exists()


def test_same_port_on_different_addresses_is_fine(instance: Path):
    cfg = load_config(write(instance, NO_TLS + """
[listeners.mx6]
protocol = "smtp"
bind = "[::1]:2525"
tls = "none"
"""))
    assert len(cfg.listeners) == 2


# ---------------------------------------------------------------- one-line errors

LISTENER = '[listeners.{name}]\nprotocol = "{protocol}"\nbind = "{bind}"\ntls = "{tls}"\n'


def listener(name="imap", protocol="imap", bind="127.0.0.1:2143", tls="none"):
    return LISTENER.format(name=name, protocol=protocol, bind=bind, tls=tls)


BAD = [
    # unknown keys and sections
    ("[smtp]\nmax_recipent = 5\n", "smtp.max_recipent: unknown key (did you mean smtp.max_recipients?)"),
    ("[smpt]\nmax_recipients = 5\n", "smpt: unknown section (did you mean smtp?)"),
    ("[nothing_like_it]\n", "nothing_like_it: unknown section"),
    ("smtp = 5\n", "smtp: expected a table"),
    # wrong types
    ('[smtp]\nmax_recipients = "100"\n', 'smtp.max_recipients: expected an integer, got string "100"'),
    ("[smtp]\nmax_recipients = true\n", "smtp.max_recipients: expected an integer, got boolean true"),
    ("[smtp]\nmax_recipients = 1.5\n", "smtp.max_recipients: expected an integer"),
    ('[instance]\ndev = "yes"\n', "instance.dev: expected true or false"),
    ("[instance]\nhostname = 5\n", "instance.hostname: expected a string"),
    ("[smtp]\nmax_message_size = true\n", "smtp.max_message_size: expected a size"),
    ("[smtp]\nidle_timeout = [1]\n", "smtp.idle_timeout: expected a duration"),
    ('[dns]\nresolvers = "1.1.1.1"\n', "dns.resolvers: expected a list of IP addresses"),
    ("[tls]\ncert_file = 5\n", "tls.cert_file: expected a path"),
    # impossible values
    ("[smtp]\nmax_recipients = 0\n", "smtp.max_recipients: 0 is below the minimum 1"),
    ("[auth]\nargon2_parallelism = 65\n", "auth.argon2_parallelism: 65 is above the maximum 64"),
    ('[smtp]\nmax_message_size = "12Q"\n', "smtp.max_message_size: invalid size '12Q'"),
    ("[smtp]\nmax_message_size = -1\n", "smtp.max_message_size: must not be negative"),
    ('[smtp]\nmax_message_size = ""\n', "smtp.max_message_size: invalid size ''"),
    ('[smtp]\nmax_message_size = "3G"\n', "smtp.max_message_size: 3G is above the maximum 2G"),
    ('[smtp]\nmax_line_length = 500\n', "smtp.max_line_length: 500 is below the minimum 1000"),
    ('[smtp]\nidle_timeout = "5x"\n', "smtp.idle_timeout: invalid duration '5x'"),
    ('[smtp]\nidle_timeout = "-1"\n', "smtp.idle_timeout: invalid duration '-1'"),
    ('[imap]\nidle_timeout = "10s"\n', "imap.idle_timeout: 10s is below the minimum 1m"),
    ('[instance]\nlanguage = "fr"\n', 'instance.language: "fr" is not one of en, zh-CN'),
    ('[log]\nlevel = "loud"\n', "log.level:"),
    ('[tls]\nmin_version = "TLSv1.1"\n', "tls.min_version:"),
    ('[instance]\nhostname = "bad host"\n', "instance.hostname: invalid host name 'bad host'"),
    ('[instance]\nhostname = ""\n', "instance.hostname: invalid host name ''"),
    ('[storage]\ndatabase_url = "mysql://x"\n', "storage.database_url: must start with sqlite:// or postgresql"),
    ('[storage]\nmail_dir = ""\n', "storage.mail_dir: must not be empty"),
    ('[antispam]\nurl = "127.0.0.1:11333"\n', "antispam.url: must be an http:// or https:// URL"),
    ('[dns]\nresolvers = ["1.1.1.1", "1.2.3"]\n', "dns.resolvers: '1.2.3' is not an IP address"),
    ('[queue]\nsmarthost = "relay.example:99999"\n', "queue.smarthost: port 99999 out of range"),
    ('[queue]\nsmarthost_user = "me"\n', "queue.smarthost_password_file: required when queue.smarthost_user is set"),
    ('[queue]\nsmarthost_password_file = "nope.secret"\n', "queue.smarthost_password_file: "),
    ('[queue]\ndelay_notice_after = "6d"\n', "queue.delay_notice_after: must be shorter than queue.max_lifetime"),
    # listeners
    (listener(bind="127.0.0.1:70000"), "listeners.imap.bind: port 70000 out of range 1-65535"),
    (listener(bind="127.0.0.1"), "listeners.imap.bind: missing port in '127.0.0.1'"),
    (listener(bind="::1:143"), 'listeners.imap.bind: IPv6 addresses must be in brackets, e.g. "[::1]:143"'),
    (listener(bind="[::1x]:143"), "listeners.imap.bind: invalid host"),
    (listener(protocol="imap4"), 'listeners.imap.protocol: "imap4" is not one of smtp, submission, imap, pop3, http'),
    (listener(tls="yes"), "listeners.imap.tls: "),
    (listener(name="panel", protocol="http", tls="starttls"), "listeners.panel.tls: starttls is not possible with protocol http"),
    ('[listeners.imap]\nprotocol = "imap"\nbind = "127.0.0.1:143"\n', "listeners.imap.tls: missing"),
    ('[listeners.imap]\nprotocol = "imap"\ntls = "none"\n', "listeners.imap.bind: missing"),
    (listener() + 'port = 143\n', "listeners.imap.port: unknown key"),
    ("[listeners]\nimap = 5\n", "listeners.imap: expected a table"),
    ('[listeners]\nbind = "127.0.0.1:25"\n', "listeners.bind: expected a table"),
    ("listeners = 1\n", "listeners: expected a table"),
    ('[listeners."a b"]\n', "listeners.a b: invalid listener name"),
    (listener() + listener(name="imap2"), "listeners.imap2.bind: 127.0.0.1:2143 is already used by listeners.imap"),
    (listener(bind="0.0.0.0:143") + listener(name="imap2", bind="127.0.0.1:143"),
     "listeners.imap2.bind: 127.0.0.1:143 is already used by listeners.imap"),
    (listener(bind="[::]:143") + listener(name="imap2", bind="127.0.0.1:143"),
     "listeners.imap2.bind: 127.0.0.1:143 is already used by listeners.imap"),
    (listener(bind="[::1]:143") + listener(name="imap2", bind="[0::1]:143"),
     "listeners.imap2.bind: [::1]:143 is already used by listeners.imap"),
]


@pytest.mark.parametrize("text, expected", BAD, ids=[b[1].split(":")[0] + f"-{i}" for i, b in enumerate(BAD)])
def test_bad_values_give_one_line_naming_the_key(instance: Path, text: str, expected: str):
    path = write(instance, text)
    assert expected in load_error(path)


def test_exact_message_with_relative_path(instance: Path, monkeypatch):
    monkeypatch.chdir(instance)
    write(instance, listener(bind="127.0.0.1:70000"))
    with pytest.raises(ConfigError) as info:
        load_config("appliance.toml")
    assert str(info.value) == "appliance.toml: listeners.imap.bind: port 70000 out of range 1-65535"
    assert info.value.key == "listeners.imap.bind"
    assert info.value.problem == "port 70000 out of range 1-65535"


def test_toml_syntax_error_names_the_line(tmp_path: Path):
    message = load_error(write(tmp_path, "[smtp]\nmax_recipients = 5\nthis is not toml\n"))
    assert "line 3" in message and "invalid TOML" in message


def test_duplicate_key_is_a_syntax_error(tmp_path: Path):
    assert "line 3" in load_error(write(tmp_path, "[smtp]\nmax_errors = 1\nmax_errors = 2\n"))


def test_missing_file(tmp_path: Path):
    message = load_error(tmp_path / "nope.toml")
    assert "cannot read: No such file or directory" in message


def test_unreadable_file(tmp_path: Path):
    (tmp_path / "dir.toml").mkdir()
    assert "cannot read:" in load_error(tmp_path / "dir.toml")


def test_not_utf8(tmp_path: Path):
    path = tmp_path / "appliance.toml"
    path.write_bytes(b'[instance]\nname = "\xff"\n')
    assert "not valid UTF-8" in load_error(path)


def test_data_dir_missing(instance: Path):
    message = load_error(write(instance, '[instance]\ndata_dir = "nope"\n'))
    assert f"instance.data_dir: {instance / 'nope'} does not exist" in message


def test_data_dir_is_a_file(instance: Path):
    (instance / "afile").write_text("")
    assert "instance.data_dir: " in load_error(write(instance, '[instance]\ndata_dir = "afile"\n'))


def test_data_dir_not_writable(instance: Path, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode & os.W_OK else real_access(p, mode))
    message = load_error(write(instance, ""))
    assert f"instance.data_dir: {instance} is not writable" in message


def test_cert_missing(tmp_path: Path):
    message = load_error(write(tmp_path, ""))
    assert f"tls.cert_file: {tmp_path / 'tls' / 'cert.pem'} does not exist (listeners.mx uses TLS;" in message


def test_key_missing(instance: Path):
    (instance / "tls" / "key.pem").unlink()
    assert "tls.key_file: " in load_error(write(instance, ""))


def test_cert_not_pem(instance: Path):
    (instance / "tls" / "cert.pem").write_text("not a certificate\n")
    assert "tls.cert_file: cannot load the certificate and key (not a PEM certificate)" in load_error(write(instance, ""))


def test_key_does_not_match(instance: Path, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    generate_self_signed_cert(other / "c.pem", other / "k.pem", "other.example")
    shutil.copy(other / "k.pem", instance / "tls" / "key.pem")
    message = load_error(write(instance, ""))
    assert "tls.key_file: cannot load the certificate and key (not a PEM private key, or it does not match" in message


def test_key_not_pem(instance: Path):
    (instance / "tls" / "key.pem").write_text("not a key\n")
    assert "tls.key_file: cannot load the certificate and key" in load_error(write(instance, ""))


# ---------------------------------------------------------------- the shipped file and rendering


def test_shipped_file_is_the_rendered_default():
    assert (REPO / "appliance.toml").read_text(encoding="utf-8") == render_default_config()


def test_shipped_file_loads(instance: Path):
    shutil.copy(REPO / "appliance.toml", instance / "appliance.toml")
    cfg = load_config(instance / "appliance.toml")
    assert cfg.sections == load_config(write(instance, "", name="empty.toml")).sections


def test_rendered_file_documents_every_key():
    text = render_default_config()
    for name, section in SCHEMA.items():
        for key, opt in section.options.items():
            assert opt.help, f"{name}.{key} has no help"
            if section.named:
                assert f"#   {key}: " in text
            else:
                assert re.search(rf"^# .*\n{re.escape(key)} = ", text[text.index(f"[{name}]"):], re.M)
    dotted = [k for k, _ in iter_options()]
    assert "smtp.max_message_size" in dotted and "listeners.NAME.bind" in dotted


def test_render_overrides(instance: Path):
    text = render_default_config(
        instance__hostname="mx.corp.example",
        **{"smtp.max_message_size": "50M", "instance.dev": False, "dns.resolvers": ["127.0.0.53"]},
        listeners={"mx": {"protocol": "smtp", "bind": "[::1]:2525", "tls": "starttls"}},
    )
    cfg = load_config(write(instance, text))
    assert cfg.instance.hostname == "mx.corp.example"
    assert cfg.instance.dev is False
    assert cfg.smtp.max_message_size == 50 * M
    assert cfg.dns.resolvers == ("127.0.0.53",)
    assert list(cfg.listeners) == ["mx"] and cfg.listeners["mx"].host == "::1"
    with pytest.raises(TypeError):
        render_default_config(smtp__nope=1)
    with pytest.raises(TypeError):
        render_default_config(bogus=1)


# ---------------------------------------------------------------- translations


def test_errors_in_chinese(instance: Path):
    i18n.set_language("zh-CN")
    message = load_error(write(instance, listener(bind="127.0.0.1:70000")))
    assert message.endswith("listeners.imap.bind: 端口 70000 超出范围 1-65535")


def test_language_from_environment(instance: Path, monkeypatch):
    monkeypatch.setenv("APPLIANCE_LANG", "zh_CN.UTF-8")
    assert "未知的配置项" in load_error(write(instance, "[smtp]\nbogus = 1\n"))
    monkeypatch.setenv("APPLIANCE_LANG", "de_DE")
    assert i18n.get_language() == "en"
    with pytest.raises(ValueError):
        i18n.set_language("klingon")


def test_catalogue_keeps_placeholders():
    fields = lambda s: sorted(f[1] for f in string.Formatter().parse(s) if f[1] is not None)  # noqa: E731
    for lang, catalogue in i18n.CATALOGUES.items():
        for english, translated in catalogue.items():
            assert fields(english) == fields(translated), (lang, english)


def test_every_config_message_is_translated():
    import ast

    used = set()
    for module in ("config.py", "keys.py"):
        tree = ast.parse((REPO / "appliance" / module).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_" and node.args:
                if isinstance(node.args[0], ast.Constant):
                    used.add(node.args[0].value)
    assert used and not used - set(i18n.CATALOGUES["zh-CN"])
