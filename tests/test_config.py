"""Config: precedence, validation messages, the example file, and the key kept secret."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import yaml

from bgremove.config import Config, example_config_keys, load_config
from bgremove.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_example_documents_every_key_with_its_default() -> None:
    example = _flatten(yaml.safe_load((ROOT / "config.example.yaml").read_text()))
    assert sorted(example) == sorted(example_config_keys())
    loaded = load_config(ROOT / "config.example.yaml", env={})
    assert loaded == Config()


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("wavespeed:\n  base_url: http://127.0.0.1:1\n  wait: poll\nconcurrency: 3\n")
    env = {"WAVESPEED_BASE_URL": "http://127.0.0.2", "WAVESPEED_API_KEY": "k-env"}
    config = load_config(file, env=env, overrides={"wavespeed.base_url": "http://[::1]:9"})
    assert config.wavespeed.base_url == "http://[::1]:9"
    assert config.wavespeed.wait == "poll"
    assert config.concurrency == 3
    assert config.wavespeed.api_key == "k-env"
    assert load_config(file, env=env).wavespeed.base_url == "http://127.0.0.2"


def test_config_found_through_environment_variable(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("concurrency: 7\n")
    assert load_config(None, env={"BGREMOVE_CONFIG": str(file)}).concurrency == 7


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("colour: red\n", "unknown key 'colour'"),
        ("wavespeed:\n  timeout: 3\n", "unknown key 'wavespeed.timeout'"),
        ("concurrency: many\n", "'concurrency' must be a whole number"),
        ("concurrency: 0\n", "it must be at least 1"),
        ("output:\n  format: gif\n", "allowed: png, webp, tiff, jpg"),
        ("wavespeed: 3\n", "'wavespeed' must be a mapping"),
        ("local:\n  refine: maybe\n", "must be true or false"),
        ("- a\n- b\n", "must hold a mapping"),
        ("a: [\n", "not valid YAML at line"),
        ("backend: local\nlog_level: info\nbackend: wavespeed\n",
         "key 'backend' is given twice (lines 1 and 3)"),
        ("wavespeed:\n  retry:\n    max_attempts: 3\n  retry:\n    max_attempts: 4\n",
         "key 'retry' is given twice (lines 2 and 4)"),
        ("watch:\n  retry_uncertain_submits: 1\n", "looked up in the service's task list"),
    ],
)
def test_bad_files_name_file_key_and_allowed(tmp_path: Path, text: str, expected: str) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(file, env={})
    assert expected in str(info.value)
    assert str(file) in str(info.value)


@pytest.mark.parametrize("text", [
    "wavespeed:\n  api_key:\n  {key}: 1\n",  # pasted on the next line: a key of its own
    "{key}:\n",
    "wavespeed:\n  {key}:\n",
])
def test_a_secret_pasted_as_a_key_name_is_never_echoed(tmp_path: Path, text: str) -> None:
    key = "ws_3f9a1c0b7d2e4f6a8b1c3d5e7f9a0b2c4d6e8f0a1b3c5d7e"
    file = tmp_path / "bad.yaml"
    file.write_text(text.format(key=key))
    with pytest.raises(ConfigError) as info:
        load_config(file, env={})
    shown = f"{info.value} {info.value.hint}"
    assert "unknown key (not shown" in shown
    assert key not in shown and key[:12] not in shown


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", env={})


def test_key_is_not_in_repr_and_readable_file_warns(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    secret = "ws-very-secret-key-123"
    file = tmp_path / "c.yaml"
    file.write_text(f"wavespeed:\n  api_key: {secret}\n")
    os.chmod(file, 0o644)
    with caplog.at_level(logging.WARNING):
        config = load_config(file, env={})
    assert config.wavespeed.api_key == secret
    assert secret not in repr(config)
    assert "readable by other users" in caplog.text
    assert secret not in caplog.text
    caplog.clear()
    os.chmod(file, 0o600)
    with caplog.at_level(logging.WARNING):
        load_config(file, env={})
    assert "readable by other users" not in caplog.text


@pytest.mark.parametrize("mode", [0o602, 0o620, 0o666])
def test_config_others_can_write_is_refused_while_a_key_is_set(tmp_path: Path,
                                                               mode: int) -> None:
    secret = "ws-very-secret-key-123"
    file = tmp_path / "c.yaml"
    file.write_text(f"wavespeed:\n  api_key: {secret}\n")
    os.chmod(file, mode)
    with pytest.raises(ConfigError) as info:
        load_config(file, env={})
    text = str(info.value)
    assert "other users can write it" in text and f"chmod go-w {file}" in text
    assert secret not in text
    # the key from the environment is just as exposed: base_url could point anywhere
    file.write_text("concurrency: 2\n")
    with pytest.raises(ConfigError, match="not safe to use with an API key"):
        load_config(file, env={"WAVESPEED_API_KEY": secret})


def test_config_without_a_key_others_can_write_only_warns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("concurrency: 2\n")
    os.chmod(file, 0o666)
    with caplog.at_level(logging.WARNING):
        assert load_config(file, env={}).concurrency == 2
    assert "other users can write it" in caplog.text


def test_config_in_a_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    file = shared / "c.yaml"
    file.write_text("wavespeed:\n  api_key: ws-very-secret-key-123\n")
    os.chmod(file, 0o600)
    os.chmod(shared, 0o777)  # anyone can rename c.yaml away and put theirs in its place
    with pytest.raises(ConfigError, match=f"can write the folder {shared}"):
        load_config(file, env={})
    os.chmod(shared, 0o1777)  # sticky (like /tmp): only the owner may rename it
    assert load_config(file, env={}).wavespeed.api_key == "ws-very-secret-key-123"


@pytest.mark.parametrize("url", ["http://api.example.com", "http://10.0.0.5:8080/",
                                 "http://[2001:db8::1]:80", "http://127.0.0.1@evil.example"])
def test_plain_http_to_another_machine_is_refused_unless_allowed(tmp_path: Path,
                                                                 url: str) -> None:
    with pytest.raises(ConfigError, match="allow_insecure_http"):
        load_config(None, env={"WAVESPEED_BASE_URL": url})
    file = tmp_path / "c.yaml"
    file.write_text("wavespeed:\n  allow_insecure_http: true\n")
    assert load_config(file, env={"WAVESPEED_BASE_URL": url}).wavespeed.base_url == url


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765", "http://localhost", "http://[::1]:9",
                                 "http://127.1.2.3", "https://api.example.com"])
def test_https_and_plain_http_to_this_machine_are_accepted(url: str) -> None:
    assert load_config(None, env={"WAVESPEED_BASE_URL": url}).wavespeed.base_url == url


def test_concurrency_reaches_the_biggest_accounts_limit() -> None:
    from bgremove.choices import ACCOUNT_LIMITS

    biggest = max(tasks for tasks, _ in ACCOUNT_LIMITS.values())
    for key in ("concurrency", "watch.concurrency"):
        assert Config().with_overrides({key: biggest}) is not None
        with pytest.raises(ConfigError):
            Config().with_overrides({key: biggest + 1})
