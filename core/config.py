"""Settings: a YAML file, environment variables and flags, checked at start.

Precedence: flag > environment > file > default. The file is ``--config``,
else ``$BGREMOVE_CONFIG``, else ``config.yaml`` in the user's config dir (if it
exists). ``WAVESPEED_API_KEY`` and ``WAVESPEED_BASE_URL`` override the file.
Unknown keys, wrong types and impossible values raise ``ConfigError`` naming
the file, the key and what is allowed. ``config.example.yaml`` documents every
key; a test keeps the two in step.

The API key is held in a field excluded from ``repr`` and is never logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import re
import stat
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from bgremove.choices import (
    ACCOUNT_LEVELS,
    BACKENDS,
    LOCAL_MODELS,
    LOG_LEVELS,
    OUTPUT_FORMATS,
    WAIT_MODES,
)
from bgremove.errors import ConfigError

log = logging.getLogger(__name__)

ENV_CONFIG = "BGREMOVE_CONFIG"
ENV_API_KEY = "WAVESPEED_API_KEY"
ENV_BASE_URL = "WAVESPEED_BASE_URL"
DEFAULT_BASE_URL = "https://api.wavespeed.ai"
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def _opt(default: Any, *, choices: tuple[Any, ...] | None = None, min: float | None = None,
         max: float | None = None, secret: bool = False) -> Any:
    """A dataclass field with validation metadata; a secret is kept out of repr and messages."""
    return field(default=default, repr=not secret,
                 metadata={"choices": choices, "min": min, "max": max, "secret": secret})


@dataclass(frozen=True)
class Timeouts:
    """Seconds allowed for each kind of call; none is ever unlimited."""

    connect: float = _opt(10.0, min=0.1)
    upload: float = _opt(120.0, min=0.1)
    submit: float = _opt(60.0, min=0.1)
    sync_wait: float = _opt(300.0, min=0.1)  # a sync-mode submit stays open until the task ends
    result: float = _opt(30.0, min=0.1)
    download: float = _opt(120.0, min=0.1)
    overall: float = _opt(900.0, min=1.0)  # one image, all attempts included


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for connection errors, 408, 429 and 5xx."""

    max_attempts: int = _opt(6, min=1, max=100)
    backoff_initial: float = _opt(0.5, min=0.0)
    backoff_max: float = _opt(30.0, min=0.0)
    retry_after_max: float = _opt(300.0, min=0.0)


@dataclass(frozen=True)
class PollPolicy:
    """How often a task's result is asked for while it runs."""

    initial: float = _opt(0.5, min=0.05)
    factor: float = _opt(1.5, min=1.0, max=10.0)
    max: float = _opt(5.0, min=0.05)


@dataclass(frozen=True)
class ReconcilePolicy:
    """How a submit whose answer was lost is looked up in the service's task list."""

    # The list is searched this many seconds either side of the send; a computer clock
    # further off the service's makes the search unsure (an error, never a resend).
    clock_skew: float = _opt(60.0, min=5.0)
    # "No task was created" is trusted only this many seconds after the answer was lost.
    settle: float = _opt(10.0, min=0.0)


@dataclass(frozen=True)
class WaveSpeedConfig:
    """The WaveSpeed service: key, address, limits, timeouts, retries and polling."""

    api_key: str | None = _opt(None, secret=True)
    base_url: str = DEFAULT_BASE_URL
    # http:// to a host other than this machine sends the key and images in clear: refused
    # unless this says so.
    allow_insecure_http: bool = False
    wait: str = _opt("sync", choices=WAIT_MODES)
    base64_output: bool = False
    max_upload_bytes: int = _opt(20 * 1024 * 1024, min=1024)
    max_upload_side: int = _opt(8192, min=64)
    # The account's limits, kept by ``remove`` and ``watch`` both (``bgremove.account``): the
    # level caps tasks at once and images per minute; images per minute 0 is no limit.
    account_level: str | None = _opt(None, choices=(None, *ACCOUNT_LEVELS))
    images_per_minute: int = _opt(0, min=0)
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll: PollPolicy = field(default_factory=PollPolicy)
    reconcile: ReconcilePolicy = field(default_factory=ReconcilePolicy)


@dataclass(frozen=True)
class LocalConfig:
    """The offline model."""

    model: str = _opt("u2netp", choices=LOCAL_MODELS)
    threads: int = _opt(0, min=0, max=256)  # 0: let onnxruntime choose
    refine: bool = False  # edge refinement
    refine_size: int = _opt(1024, min=320, max=8192)  # longer side the refinement works at
    cache_dir: str | None = None  # default: the user's cache dir


@dataclass(frozen=True)
class OutputConfig:
    """What is written for each image."""

    format: str = _opt("png", choices=OUTPUT_FORMATS)
    mask_only: bool = False
    background: str | None = None  # a colour: "#ffffff", "white", "255,255,255"
    crop: bool = False
    crop_margin: int = _opt(0, min=0)
    # Foreground colour estimation: soft edges stop carrying the old background's colour.
    foreground: bool = False
    suffix: str = "-nobg"  # used when no output folder is given
    # False: the output keeps the input's EXIF minus the GPS location (bgremove.imaging._meta).
    strip_metadata: bool = False


@dataclass(frozen=True)
class InputConfig:
    """What inputs are accepted."""

    max_pixels: int = _opt(100_000_000, min=1)


@dataclass(frozen=True)
class WatchConfig:
    """The hot-folder daemon (``bgremove watch``)."""

    inbox: str | None = None
    outbox: str | None = None
    done: str | None = None  # default INBOX/done
    failed: str | None = None  # default INBOX/failed
    recursive: bool = False
    polling: bool = False
    once: bool = False
    json: bool = False
    # The daemon's own share of the account; None: wavespeed.account_level / images_per_minute.
    account_level: str | None = _opt(None, choices=(None, *ACCOUNT_LEVELS))
    concurrency: int = _opt(2, min=1, max=10000)  # tasks in flight (Ultra: 10,000)
    images_per_minute: int | None = _opt(None, min=0)  # 0: no limit
    max_per_hour: int = _opt(0, min=0)  # cost guard, 0: no cap
    max_per_day: int = _opt(0, min=0)
    stable_seconds: float = _opt(0.5, min=0.0)  # size and mtime unchanged this long
    rescan_seconds: float = _opt(30.0, min=1.0)
    poll_seconds: float = _opt(1.0, min=0.1)  # polling observer interval
    retry_for_seconds: float = _opt(900.0, min=0.0)  # give up transient errors after
    reprocess: bool = False  # process content already seen
    journal: str | None = None  # default: OUTBOX/.bgremove/journal.sqlite3
    shutdown_grace: float = _opt(30.0, min=0.0)
    # A file that still does not decode after being unchanged this long is broken.
    settle_seconds: float = _opt(5.0, min=0.0)
    stale_claim_seconds: float = _opt(60.0, min=1.0)  # a daemon silent this long is dead
    # Service unreachable or offline model missing: intake pauses; one file retries this often.
    outage_retry_seconds: float = _opt(30.0, min=0.1)


@dataclass(frozen=True)
class Config:
    """The whole configuration: defaults, then the config file, then the environment and flags."""

    backend: str = _opt("auto", choices=BACKENDS)
    concurrency: int = _opt(4, min=1, max=10000)  # tasks in flight (Ultra: 10,000)
    log_level: str = _opt("info", choices=LOG_LEVELS)
    wavespeed: WaveSpeedConfig = field(default_factory=WaveSpeedConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    input: InputConfig = field(default_factory=InputConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    #: Where the settings came from (not a key of the file).
    source: str | None = field(default=None, compare=False, metadata={"internal": True})
    #: Where the API key came from: ``WAVESPEED_API_KEY``, a config file, or None.
    key_source: str | None = field(default=None, compare=False, metadata={"internal": True})

    def with_overrides(self, overrides: Mapping[str, Any], origin: str = "flag") -> Config:
        """Return a copy with dotted keys (``"wavespeed.wait"``) replaced, validated."""
        return _apply(self, {k: v for k, v in overrides.items() if v is not None}, origin)


def default_config_path() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir("bgremove")) / "config.yaml"


def find_config_file(explicit: str | os.PathLike[str] | None,
                     env: Mapping[str, str] | None = None) -> Path | None:
    """The config file to read: explicit, then $BGREMOVE_CONFIG, then the default if present."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit).expanduser()
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser()
    path = default_config_path()
    return path if path.is_file() else None


def load_config(path: str | os.PathLike[str] | None = None, *,
                overrides: Mapping[str, Any] | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Read, merge and validate the settings (flag > env > file > default)."""
    env = os.environ if env is None else env
    config = Config()
    file = find_config_file(path, env)
    url_origin = "wavespeed.base_url"
    file_holds_key = False
    if file is not None:
        data = _read_yaml(file)
        config = _apply(config, _flatten(data), str(file))
        config = dataclasses.replace(config, source=str(file),
                                     key_source=str(file) if config.wavespeed.api_key else None)
        url_origin = f"{file}: wavespeed.base_url"
        file_holds_key = config.wavespeed.api_key is not None
    env_values = {}
    if env.get(ENV_API_KEY):
        env_values["wavespeed.api_key"] = env[ENV_API_KEY].strip()
        config = dataclasses.replace(config, key_source=ENV_API_KEY)
    if env.get(ENV_BASE_URL):
        env_values["wavespeed.base_url"] = env[ENV_BASE_URL].strip()
        url_origin = ENV_BASE_URL
    config = _apply(config, env_values, "environment")
    if overrides:
        config = config.with_overrides(overrides)
    _check_service_settings(config, url_origin)
    _check_output_settings(config)
    if file is not None:
        _check_file_safety(file, config, holds_key=file_holds_key)
    return config


def _check_output_settings(config: Config) -> None:
    """Output options that contradict each other fail now rather than one being ignored."""
    if config.output.mask_only and config.output.background is not None:
        raise ConfigError("output.mask_only and output.background cannot be combined: "
                          "a mask has no background",
                          hint="drop --background (or output.background) or --mask-only")


def _check_service_settings(config: Config, url_origin: str = "wavespeed.base_url") -> None:
    """A key that cannot go in an HTTP header, or a base URL that is not one, fails now."""
    key = config.wavespeed.api_key
    if key is not None and not re.fullmatch(r"[\x21-\x7e]+", key):
        # Never echo the key: say only what is wrong with it.
        raise ConfigError("the WaveSpeed API key contains spaces, control or non-ASCII characters",
                          hint="copy it again from https://wavespeed.ai/accesskey")
    url = config.wavespeed.base_url
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0]
    if scheme not in ("http", "https") or not host or any(c.isspace() for c in url):
        raise ConfigError(f"{url_origin} {url!r} is not an http(s) URL",
                          hint="e.g. https://api.wavespeed.ai or http://127.0.0.1:8765")
    if "[" in host and not re.fullmatch(r"\[[0-9a-fA-F:.]+\](:\d+)?", host):
        raise ConfigError(f"{url_origin} {url!r} has a malformed host")
    if scheme == "http" and not config.wavespeed.allow_insecure_http and not is_loopback(host):
        raise ConfigError(
            f"{url_origin} {url!r} is plain http to another machine: the API key and "
            "the images would cross the network unencrypted",
            hint="use https://, or set wavespeed.allow_insecure_http: true in the config file "
            "if that network path is trusted")


def is_loopback(host: str) -> bool:
    """``host`` (``name[:port]`` or ``[v6]:port``) names this machine."""
    name = host.rsplit("@", 1)[-1]
    name = name[1:].split("]", 1)[0] if name.startswith("[") else name.rsplit(":", 1)[0]
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _read_yaml(file: Path) -> Mapping[str, Any]:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist",
                          hint="check the --config path or $BGREMOVE_CONFIG") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {file}: {exc}") from None
    import yaml  # here: most runs have no config file, and the import costs ~10 ms

    try:
        data = yaml.load(text, Loader=_unique_keys_loader(yaml, file))  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {file} is not valid YAML{where}",
                          hint="compare it with config.example.yaml") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file} must hold a mapping of keys, "
                          f"not {type(data).__name__}")
    return data


def _unique_keys_loader(yaml: Any, file: Path) -> Any:
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last
    silently: a pasted line would override the setting above it unseen)."""

    class Loader(yaml.SafeLoader):  # type: ignore[misc]
        pass

    def mapping(loader: Any, node: Any, deep: bool = False) -> Any:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = lines.setdefault(key, line)
            except TypeError:  # an unhashable key: the safe loader says so
                break
            if first != line:
                raise ConfigError(f"config file {file}: key {_shown_key(str(key))} is given "
                                  f"twice (lines {first} and {line})",
                                  hint="keep one: the second would silently win")
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key != "api_key":  # a secret is never a section
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


#: Keys that existed once: what to do instead.
REMOVED_KEYS = {
    "watch.retry_uncertain_submits": "a submit whose answer was lost is now looked up in the "
    "service's task list instead of being sent again blindly: delete this key",
}


def _apply(config: Config, values: Mapping[str, Any], origin: str) -> Config:
    """Set dotted keys on the frozen tree, validating each value."""
    result: Any = config
    for dotted, value in values.items():
        if dotted in REMOVED_KEYS:
            raise ConfigError(f"{origin}: key {dotted!r} no longer exists",
                              hint=REMOVED_KEYS[dotted])
        result = _set(result, dotted.split("."), value, dotted, origin)
    return typing.cast(Config, result)


def _set(obj: Any, parts: list[str], value: Any, dotted: str, origin: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(obj) if not f.metadata.get("internal")}
    name = parts[0]
    if name not in fields:
        allowed = ", ".join(sorted(fields))
        import difflib  # here: only a misspelt key needs it

        close = difflib.get_close_matches(name, fields, n=1)
        guess = ""
        if close:
            at = dotted.split(".")
            guess = f"did you mean {'.'.join([*at[:len(at) - len(parts)], close[0]])!r}? "
        raise ConfigError(f"{origin}: unknown key {_shown_key(dotted)}",
                          hint=f"{guess}allowed here: {allowed}")
    hints = typing.get_type_hints(type(obj))
    ftype = hints[name]
    current = getattr(obj, name)
    if dataclasses.is_dataclass(current):
        if len(parts) == 1:
            raise ConfigError(f"{origin}: key {dotted!r} must be a mapping of keys",
                              hint="see config.example.yaml")
        new = _set(current, parts[1:], value, dotted, origin)
    else:
        if len(parts) > 1:
            section = ".".join(dotted.split(".")[:-len(parts) + 1])
            raise ConfigError(f"{origin}: unknown key {_shown_key(dotted)}",
                              hint=f"{section} is not a section")
        new = _check(value, ftype, fields[name].metadata, dotted, origin)
    return dataclasses.replace(obj, **{name: new})


#: What a setting's name can look like; anything else is not echoed (see ``_shown_key``).
_KEY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,31}")


def _shown_key(dotted: str) -> str:
    """The unknown key quoted, unless a part of it does not look like a setting's name: an API
    key pasted on a line of its own becomes a YAML key, and must not be printed."""
    if all(_KEY_NAME.fullmatch(part) for part in dotted.split(".")):
        return repr(dotted)
    return "(not shown: it does not look like a setting's name; a pasted secret?)"


def _check(value: Any, ftype: Any, meta: Mapping[str, Any], dotted: str, origin: str) -> Any:
    if meta.get("secret") and value is not None and not isinstance(value, str):
        # Say what kind of value it is, never the value: it may be the key itself.
        kind = {bool: "true/false", int: "a number", float: "a number", list: "a list",
                dict: "a mapping"}.get(type(value), type(value).__name__)
        raise ConfigError(f"{origin}: key {dotted!r} must be text, not {kind}",
                          hint="put the value in quotes")
    args = typing.get_args(ftype)
    optional = typing.get_origin(ftype) in (Union, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), ftype) if optional else ftype
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{origin}: key {dotted!r} needs a value",
                          hint=f"expected {base.__name__}")
    if base is bool:
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            value = value.lower() in _TRUE
        if not isinstance(value, bool):
            raise ConfigError(f"{origin}: key {dotted!r} must be true or false, not {value!r}")
    elif base is int:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = int(value.replace("_", ""))
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{origin}: key {dotted!r} must be a whole number, not {value!r}")
    elif base is float:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{origin}: key {dotted!r} must be a number, not {value!r}")
        value = float(value)
    elif base is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{origin}: key {dotted!r} must be text, not {value!r}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        shown = ", ".join("null" if c is None else str(c) for c in choices)
        raise ConfigError(f"{origin}: key {dotted!r} is {value!r}", hint=f"allowed: {shown}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise ConfigError(f"{origin}: key {dotted!r} is {value!r}",
                          hint=f"it must be at least {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{origin}: key {dotted!r} is {value!r}", hint=f"it must be at most {hi}")
    return value


def _check_file_safety(file: Path, config: Config, *, holds_key: bool) -> None:
    """Refuse a config file others can change while a key is set; warn if others can read it.

    Whoever can write the file can point ``base_url`` at their own server and collect the
    key (from the file or the environment), so a writable file is an error whenever a key
    is in use; without a key it is only a warning. "Others can write" covers the file's
    mode, its owner, and every folder above it that another user could rename it in.
    """
    if os.name != "posix":
        return
    problem = _writable_by_others(file)
    has_key = bool(config.wavespeed.api_key)
    if problem is not None:
        reason, fix = problem
        if has_key:
            raise ConfigError(f"config file {file} is not safe to use with an API key: {reason}",
                              hint=fix)
        log.warning("config file %s: %s (%s)", file, reason, fix)
    if not holds_key:
        return
    with contextlib.suppress(OSError):
        if file.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("config file %s holds the API key and is readable by other users: "
                        "run chmod 600 %s", file, file)


def _writable_by_others(file: Path) -> tuple[str, str] | None:
    """Why another user could change ``file`` (and the fix), or None."""
    me = os.geteuid()
    try:
        st = file.stat()
    except OSError:
        return None
    if st.st_uid not in (me, 0):
        return (f"it belongs to another user (uid {st.st_uid})", "use a config file you own")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return ("other users can write it", f"run chmod go-w {file}")
    seen: set[Path] = set()
    for start in (file.absolute().parent, file.resolve().parent):
        for folder in (start, *start.parents):
            if folder in seen:
                continue
            seen.add(folder)
            try:
                fst = folder.stat()
            except OSError:
                continue
            if fst.st_uid not in (me, 0):
                return (f"the folder {folder} belongs to another user, who can replace the "
                        "file", "move the config file to a folder you own")
            sticky = fst.st_mode & stat.S_ISVTX  # /tmp: others cannot rename my file
            if fst.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky:
                return (f"other users can write the folder {folder} and replace the file",
                        f"run chmod go-w {folder}, or move the config file")
    return None


def example_config_keys(config: Any = None, prefix: str = "") -> list[str]:
    """Every dotted key of the config tree (used to check config.example.yaml)."""
    obj = Config() if config is None else config
    keys: list[str] = []
    for f in dataclasses.fields(obj):
        if f.metadata.get("internal"):
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(example_config_keys(value, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys
