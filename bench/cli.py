"""The command line of `bench/run_all.py`, built from `bench.config.RunConfig`: one option per field, same name.

    cfg = parse_args(["--preset", "smoke", "--models", "allcnn-c", "--lrs", "0.05"])   # a RunConfig

`--preset` picks the base config (bench.config.PRESETS); every given option replaces its field (`--batch-size` ->
batch_size), and RunConfig checks the result. Bad input raises UsageError: one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import typing

from allconv.specs import resolve_models
from bench.config import PRESETS, PRESETS_NAMES, RunConfig
from bench.devices import precision_name


class UsageError(ValueError):
    """Bad command-line input: one line on stderr, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one-line UsageErrors (argparse would print the usage block and exit)."""

    def error(self, message):
        raise UsageError(message)


def _words(kind):
    """One word of a list option as its items, so that "0.1,0.05" is 0.1 0.05 (as --models "a,b" always was)."""
    def parse(text: str):
        return [kind(t) for t in text.split(",") if t.strip()]
    parse.__name__ = kind.__name__
    return parse


def _none_or(kind):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)
    parse.__name__ = kind.__name__
    return parse


def _ablation_names(text: str) -> list[str]:
    try:
        from bench import ablations  # here, not at the top: its import refuses a bad arm, as a usage error

        return ablations.parse(text)
    except ValueError as e:  # argparse shows an ArgumentTypeError's own message, not "invalid value"
        raise argparse.ArgumentTypeError(str(e)) from None


def precision_arg(text: str) -> str:
    """argparse type for a precision: Accelerate's name for a name or label ("fp32" -> "no")."""
    try:
        return precision_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def check_output_file(path, flag: str) -> None:
    """UsageError unless `path` (an output file option's value, None: not given) can be written: not a folder, and
    its nearest existing folder writable. Checked before any work, not after the first result was measured."""
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None) if path else None
    if path and (path.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK)):
        why = "it is a folder" if path.is_dir() else f"{folder} is not a writable folder"
        raise UsageError(f"{flag} {path}: cannot be written ({why}); give a file path in a writable folder")


def build_parser(preset: str = "paper") -> argparse.ArgumentParser:
    """One option per RunConfig field, same name, type from the annotation, help from the metadata; the defaults
    shown are the given preset's."""
    base = PRESETS[preset]
    p = Parser(prog="bench/run_all.py", description="Train the Table 3 grid into a resumable results ledger.",
               epilog=f"Defaults shown are those of --preset {preset} (bench/config.py PRESETS; `--preset smoke "
                      f"--help` shows another's). --models takes names or fnmatch patterns ('*-c'); a list option "
                      "takes its values apart or comma-separated (--lrs 0.1 0.05, --lrs 0.1,0.05).",
               argument_default=argparse.SUPPRESS)
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        flag, kind = "--" + f.name.replace("_", "-"), hints[f.name]
        default = getattr(base, f.name)
        shown = (" ".join(map(str, default)) or "none") if isinstance(default, tuple) else default
        help = f"{f.metadata['help']} (default: {shown})"
        if f.name == "ablations":
            p.add_argument(flag, type=_ablation_names, help=help)
        elif f.name in ("precision", "eval_precision"):
            p.add_argument(flag, type=precision_arg, help=help)
        elif kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=help)
        elif typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            p.add_argument(flag, type=_words(item), nargs="*" if f.name == "lr_drops" else "+", help=help)
        else:
            base_type = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
            parse = _none_or(base_type[0]) if type(None) in typing.get_args(kind) else base_type[0]
            p.add_argument(flag, type=parse, choices=f.metadata.get("choices"), help=help)
    return p


def parse_args(argv: list[str] | None) -> RunConfig:
    """The preset's config with every given option replacing its field. Bad input raises UsageError/ValueError."""
    pre = Parser(add_help=False, argument_default=argparse.SUPPRESS)
    pre.add_argument("--preset")
    preset = getattr(pre.parse_known_args(argv)[0], "preset", "paper")
    if preset not in PRESETS_NAMES:
        raise UsageError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS_NAMES)}")
    given = vars(build_parser(preset).parse_args(argv))
    given.pop("preset", None)
    for name in ("models", "lrs", "seeds", "lr_drops"):
        if name in given:
            given[name] = tuple(v for word in given[name] for v in word)
    if "ablations" in given:
        given["ablations"] = tuple(given["ablations"])
    if "models" in given:
        given["models"] = tuple(resolve_models(given["models"]))  # names or fnmatch patterns, as allconv's CLI
    return dataclasses.replace(PRESETS[preset], **given)
