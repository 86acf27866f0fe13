"""Translation of user-visible messages (English and Simplified Chinese).

Messages are written in plain English and wrapped in ``_()``; the English
text is the catalogue key. Translate the *template*, then format it, so the
placeholders survive translation::

    raise ConfigError(_("port {port} out of range {low}-{high}").format(port=p, low=1, high=65535))

The language is, in order: the one passed to ``set_language``, else the
``APPLIANCE_LANG`` environment variable (``zh-CN``, ``zh_CN.UTF-8`` and ``zh``
are all understood), else English. A message missing from a catalogue is shown
in English. Modules that own their messages may keep their translations next
to them and register them with ``add_translations``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

DEFAULT_LANGUAGE = "en"
SUPPORTED_LANGUAGES = ("en", "zh-CN")

CATALOGUES: dict[str, dict[str, str]] = {
    "zh-CN": {
        # appliance/config.py
        "cannot read: {reason}": "无法读取：{reason}",
        "not valid UTF-8": "不是有效的 UTF-8 编码",
        "line {line}, column {column}: invalid TOML: {reason}": "第 {line} 行第 {column} 列：TOML 语法错误：{reason}",
        "invalid TOML: {reason}": "TOML 语法错误：{reason}",
        "unknown section": "未知的配置节",
        "unknown key": "未知的配置项",
        " (did you mean {suggestion}?)": "（是否要写 {suggestion}？）",
        "expected a table": "应为表（table）",
        "missing (every listener needs protocol, bind and tls)": "缺少此项（每个监听器都需要 protocol、bind 和 tls）",
        "invalid listener name (use letters, digits, '-' and '_')": "监听器名称无效（只能使用字母、数字、'-' 和 '_'）",
        "expected {kind}, got {got}": "应为{kind}，实际为{got}",
        "a string": "字符串",
        "true or false": "true 或 false",
        "an integer": "整数",
        "a size such as \"512K\", \"25M\", \"2G\" or a number of bytes": "大小，例如 \"512K\"、\"25M\"、\"2G\" 或字节数",
        "a duration such as \"30s\", \"5m\", \"4h\", \"5d\" or a number of seconds": "时长，例如 \"30s\"、\"5m\"、\"4h\"、\"5d\" 或秒数",
        "a path": "路径",
        "a list of IP addresses": "IP 地址列表",
        "a list of domain names": "域名列表",
        "\"host:port\" (IPv6 as \"[::1]:port\")": "\"主机:端口\"（IPv6 写作 \"[::1]:端口\"）",
        "{value} is not one of {choices}": "{value} 不是可选值 {choices} 之一",
        "{value} is below the minimum {low}": "{value} 小于最小值 {low}",
        "{value} is above the maximum {high}": "{value} 大于最大值 {high}",
        "must not be empty": "不能为空",
        "invalid size {value!r} (e.g. \"512K\", \"25M\", \"2G\")": "无效的大小 {value!r}（例如 \"512K\"、\"25M\"、\"2G\"）",
        "invalid duration {value!r} (e.g. \"30s\", \"5m\", \"4h\", \"5d\")": "无效的时长 {value!r}（例如 \"30s\"、\"5m\"、\"4h\"、\"5d\"）",
        "must not be negative": "不能为负数",
        "{value!r} is not an IP address": "{value!r} 不是 IP 地址",
        "missing port in {value!r}": "{value!r} 中缺少端口",
        "invalid port in {value!r}": "{value!r} 中的端口无效",
        "port {port} out of range {low}-{high}": "端口 {port} 超出范围 {low}-{high}",
        "invalid host in {value!r}": "{value!r} 中的主机无效",
        "IPv6 addresses must be in brackets, e.g. \"[{host}]:{port}\"": "IPv6 地址必须放在方括号中，例如 \"[{host}]:{port}\"",
        "{path} does not exist": "{path} 不存在",
        "{path} is not a directory": "{path} 不是目录",
        "{path} is not writable": "{path} 不可写",
        "{path} is not a file": "{path} 不是文件",
        "{path} is not readable": "{path} 不可读",
        "must start with sqlite:// or postgresql": "必须以 sqlite:// 或 postgresql 开头",
        "must be an http:// or https:// URL with a host": "必须是带主机名的 http:// 或 https:// 地址",
        "{bind} is already used by listeners.{other}": "{bind} 已被 listeners.{other} 占用",
        "{tls} is not possible with protocol {protocol}": "协议 {protocol} 不支持 {tls}",
        "{path} does not exist (listeners.{listener} uses TLS; `appliance init` creates a self-signed certificate)":
            "{path} 不存在（listeners.{listener} 使用 TLS；`appliance init` 可生成自签名证书）",
        "cannot load the certificate and key ({reason})": "无法加载证书和私钥（{reason}）",
        "required when queue.smarthost_user is set": "设置了 queue.smarthost_user 时必须填写",
        "must be shorter than queue.max_lifetime": "必须短于 queue.max_lifetime",
        "invalid host name {value!r}": "无效的主机名 {value!r}",
        "a number": "数字",
        "must be below antispam.reject_score": "必须小于 antispam.reject_score",
        "a managed rspamd listens on 127.0.0.1 only: use http://127.0.0.1:PORT (or set antispam.managed = false)":
            "托管的 rspamd 只监听 127.0.0.1：请使用 http://127.0.0.1:端口（或设置 antispam.managed = false）",
        "port {port} is already used by {other}": "端口 {port} 已被 {other} 占用",
        "virus scanning needs the managed rspamd (antispam.managed = true); configure the antivirus module of your own rspamd instead":
            "病毒扫描需要托管的 rspamd（antispam.managed = true）；否则请在您自己的 rspamd 中配置 antivirus 模块",
        "environment variable {name} is not set (give a default: ${{{name}:-/path}})": "环境变量 {name} 未设置（可给出默认值：${{{name}:-/路径}}）",
    },
}


_current: str | None = None


def normalise_language(lang: str | None) -> str | None:
    """Map ``zh_CN.UTF-8``, ``zh-cn``, ``zh`` to ``zh-CN``, ``en_US`` to ``en``; None if unknown."""
    if not lang:
        return None
    tag = lang.split(".", 1)[0].split("@", 1)[0].replace("_", "-").lower()
    if tag in ("zh", "zh-cn", "zh-hans", "zh-hans-cn", "zh-sg"):
        return "zh-CN"
    if tag == "en" or tag.startswith("en-") or tag in ("c", "posix"):
        return "en"
    return None


def set_language(lang: str | None) -> None:
    """Choose the language for messages; None goes back to ``APPLIANCE_LANG`` or English."""
    global _current
    if lang is None:
        _current = None
        return
    norm = normalise_language(lang)
    if norm is None:
        raise ValueError(f"unsupported language {lang!r}; supported: {', '.join(SUPPORTED_LANGUAGES)}")
    _current = norm


def get_language() -> str:
    return _current or normalise_language(os.environ.get("APPLIANCE_LANG")) or DEFAULT_LANGUAGE


def add_translations(lang: str, messages: Mapping[str, str]) -> None:
    """Register translations (English template -> translated template) for ``lang``."""
    norm = normalise_language(lang)
    if norm is None or norm == DEFAULT_LANGUAGE:
        raise ValueError(f"cannot add translations for {lang!r}")
    CATALOGUES.setdefault(norm, {}).update(messages)


def _(s: str) -> str:
    """Translate the message template ``s`` into the current language (English if unknown)."""
    catalogue = CATALOGUES.get(get_language())
    if not catalogue:
        return s
    return catalogue.get(s, s)


def localise(exc: BaseException) -> str:
    """The message of an error in the current language.

    Store errors keep their English template and values apart (``template``,
    ``params``); those are translated, anything else is shown as it is.
    """
    template = getattr(exc, "template", None)
    params = getattr(exc, "params", None)
    if template and isinstance(params, dict):
        try:
            return _(template).format(**params)
        except (KeyError, IndexError, ValueError):
            pass
    return str(exc)
