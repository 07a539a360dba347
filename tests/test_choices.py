"""Each list of allowed values is declared once (``bgremove.choices``) and used everywhere."""

from __future__ import annotations

import argparse
import dataclasses

from bgremove import choices
from bgremove.cli import build_parser
from bgremove.config import Config

#: (config section or None, field) -> the declared list
CONFIG_FIELDS = {
    (None, "backend"): choices.BACKENDS,
    (None, "log_level"): choices.LOG_LEVELS,
    ("output", "format"): choices.OUTPUT_FORMATS,
    ("wavespeed", "wait"): choices.WAIT_MODES,
    ("local", "model"): choices.LOCAL_MODELS,
    ("watch", "account_level"): (None, *choices.ACCOUNT_LEVELS),
    ("wavespeed", "account_level"): (None, *choices.ACCOUNT_LEVELS),
}
#: (command, flag) -> the declared list
FLAGS = {
    ("remove", "--backend"): choices.BACKENDS,
    ("remove", "--format"): choices.OUTPUT_FORMATS,
    ("remove", "--log-level"): choices.LOG_LEVELS,
    ("remove", "--account-level"): choices.ACCOUNT_LEVELS,
    ("watch", "--backend"): choices.BACKENDS,
    ("watch", "--account-level"): choices.ACCOUNT_LEVELS,
    ("emulator", "--level"): choices.ACCOUNT_LEVELS,
    ("emulator", "--key-state"): choices.EMULATOR_KEY_STATES,
    ("emulator", "--model"): choices.EMULATOR_MODELS,
    ("emulator", "--sync-timeout-style"): choices.EMULATOR_SYNC_TIMEOUT_STYLES,
}


def _field_choices(section: str | None, name: str) -> object:
    owner = Config if section is None else type(getattr(Config(), section))
    (found,) = [f for f in dataclasses.fields(owner) if f.name == name]
    return found.metadata["choices"]


def test_config_validates_against_the_declared_lists() -> None:
    for (section, name), declared in CONFIG_FIELDS.items():
        assert _field_choices(section, name) == declared, (section, name)


def test_flags_offer_the_declared_lists() -> None:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for (command, flag), declared in FLAGS.items():
        sub = commands.choices[command]
        (action,) = [a for a in sub._actions if flag in a.option_strings]
        assert tuple(action.choices or ()) == declared, (command, flag)


def test_the_model_registry_and_the_account_limits_match_the_lists() -> None:
    from bgremove.local.models import MODELS

    assert tuple(MODELS) == choices.LOCAL_MODELS
    assert tuple(choices.ACCOUNT_LIMITS) == choices.ACCOUNT_LEVELS
