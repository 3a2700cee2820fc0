"""`--help` that helps: every flag shows its default, read from the command's config dataclass
when the flag feeds one (so the help cannot drift from the code), and every `--set` example
names keys the command really has (tests/test_cli_help.py parses them against the dataclass).

Flags of config-backed commands keep argparse default None (an unset flag must not override a
--config preset), so argparse alone would print "(default: None)"; `HelpFormatter` asks the
dataclass instead, and imports it only when help is printed.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

CONFIG_SOURCE = "config_source"
"""Attribute set on an argparse action: (config class path 'module:Class', dotted config key)."""


def config_class(path: str) -> type:
    """'rewardiff.generation:GenerateConfig' -> the class (imported on demand)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def config_default(path: str, key: str) -> Any:
    """The dataclass default of a dotted config key (a KeyError names a key the class lacks)."""
    from rewardiff.config import to_dict

    node: Any = to_dict(config_class(path)())
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"{path} has no config key {key!r}")
        node = node[part]
    return node


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) if value else "none"
    if value == "" or value is None:
        return "none"
    return str(value)


def mark_config_flags(parser: argparse.ArgumentParser, cls_path: str, keys: dict[str, str] | None = None) -> None:
    """Tie the parser's flags to config keys: a flag's dest is its key unless `keys` renames it
    (dest -> dotted key). Nothing is imported here; a dest the class lacks stays a plain flag."""
    for action in parser._actions:
        if action.option_strings and action.dest not in ("help", "config", "overrides"):
            key = (keys or {}).get(action.dest, action.dest)
            setattr(action, CONFIG_SOURCE, (cls_path, key))
            action.help = action.help or f"sets the config's {key}"  # argparse prints nothing for a help-less flag


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Appends '(default: X)' to every option whose help does not already say its default:
    the config dataclass's value for config-backed flags, argparse's default otherwise (None and
    empty defaults are left unsaid: such flags say in their help what leaving them out means).
    Descriptions keep their line breaks (the demo's numbered steps)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        source = getattr(action, CONFIG_SOURCE, None)
        if source is not None:
            try:
                return text + f" (default: {_shown(config_default(*source))})".replace("%", "%%")
            except KeyError:
                pass  # a flag of the command that is not a config field
        if action.default is None or action.default == [] or isinstance(action, argparse._StoreTrueAction):
            return text
        return super()._get_help_string(action)


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command parser below `parser`, keyed by its command line ('train ddpo')."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = sub
                out.update({f"{name} {k}": v for k, v in subparsers(sub).items()})
    return out


def use_help_formatter(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give the parser and every subcommand the HelpFormatter (set after building, so adding a
    command needs no extra argument)."""
    for p in [parser, *subparsers(parser).values()]:
        p.formatter_class = HelpFormatter
        for action in p._actions:
            if action.option_strings and action.help is None and action.default not in (None, argparse.SUPPRESS):
                action.help = "(default: %(default)s)"  # argparse prints nothing for a help-less flag
    return parser


def set_examples(help_text: str) -> list[str]:
    """The KEY=VALUE examples of a --set help ('e.g. --set a.b=1 --set c=x' -> ['a.b=1', 'c=x'])."""
    words = help_text.replace(",", " ").replace(")", " ").split()
    return [w for prev, w in zip(words, words[1:]) if prev == "--set" and "=" in w]
