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
    file.write_text("wavespeed:\n  base_url: http://file\n  wait: poll\nconcurrency: 3\n")
    env = {"WAVESPEED_BASE_URL": "http://env", "WAVESPEED_API_KEY": "k-env"}
    config = load_config(file, env=env, overrides={"wavespeed.base_url": "http://flag"})
    assert config.wavespeed.base_url == "http://flag"
    assert config.wavespeed.wait == "poll"
    assert config.concurrency == 3
    assert config.wavespeed.api_key == "k-env"
    assert load_config(file, env=env).wavespeed.base_url == "http://env"


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
