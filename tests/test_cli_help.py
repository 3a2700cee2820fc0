"""Help that helps (issue 16, item 6): every option says its default, the defaults printed for
config-backed flags are the dataclasses' own, every `--set` example names keys its command's
config really has, and `demo --help` says what the demo does."""

import argparse
import re

import pytest

from rewardiff.cli import build_parser
from rewardiff.cli_help import config_class, config_default, set_examples, subparsers
from rewardiff.config import ConfigError, load_config, to_dict

PARSERS = subparsers(build_parser())
CONFIG_COMMANDS = {name: p for name, p in PARSERS.items() if p.get_default("config_class")}


def _options(parser: argparse.ArgumentParser):
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            yield action, formatter._expand_help(action) if action.help else ""


def test_every_command_with_a_config_is_registered():
    # the commands whose work is configured by a dataclass (--config / --set)
    assert {"demo", "generate", "train refl", "train ddpo", "self-reward", "train-reward", "shapes train-generator",
            "shapes train-judges", "shapes make-preference-set", "train sft"} <= set(CONFIG_COMMANDS)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_says_its_default(name):
    missing = [a.option_strings[0] for a, text in _options(PARSERS[name])
               if not a.required and a.dest != "overrides" and not isinstance(a, argparse._SubParsersAction)
               and "default" not in text.lower()]
    assert not missing, f"{name}: options whose --help does not say their default: {missing}"


@pytest.mark.parametrize("name", sorted(CONFIG_COMMANDS))
def test_shown_defaults_are_the_config_defaults(name):
    """A default written by hand into a help text ('(default 30)') must be the dataclass's value."""
    parser = CONFIG_COMMANDS[name]
    checked = 0
    for action, text in _options(parser):
        source = getattr(action, "config_source", None)
        match = re.search(r"\(default:? ([^)]+)\)", text)
        if source is None or match is None:
            continue
        try:
            value = config_default(*source)
        except KeyError:
            continue
        shown = (", ".join(map(str, value)) if isinstance(value, list) else "" if value is None else str(value)) or "none"
        assert match.group(1).strip() == shown, f"{name} {action.option_strings[0]}: help says {match.group(1)!r}, config {shown!r}"
        checked += 1
    assert checked >= 1


@pytest.mark.parametrize("name", sorted(CONFIG_COMMANDS))
def test_set_examples_use_keys_the_command_has(name):
    parser = CONFIG_COMMANDS[name]
    cls = config_class(parser.get_default("config_class"))
    overrides = next(a for a in parser._actions if a.dest == "overrides")
    examples = set_examples(overrides.help)
    assert examples, f"{name}: --set help has no KEY=VALUE example"
    for example in examples:
        key, value = example.split("=", 1)
        cfg = load_config(cls, None, [example])  # an unknown key or a wrong type raises ConfigError
        node = to_dict(cfg)
        for part in key.split("."):
            node = node[part]
        assert str(node) == value or node == float(value), f"{name}: --set {example} gave {node!r}"
    with pytest.raises(ConfigError):
        load_config(cls, None, ["no_such_key_anywhere=1"])  # the check above can fail


def test_demo_help_says_what_the_demo_does():
    text = PARSERS["demo"].format_help()
    for phrase in ("shapes:eval", "oracle", "best-of-2", "self-rewarding", "LoRA", "95% CI", "OUT/base/", "report/index.html"):
        assert phrase in text, phrase
    assert "1. generates" in text and "\n 2. best-of-2" in text  # the numbered steps keep their lines


def test_set_examples_parser():
    assert set_examples("e.g. --set a.b=1 --set c=x (repeatable)") == ["a.b=1", "c=x"]
    assert set_examples("no examples here") == []
