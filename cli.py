"""The command line, generated from a config dataclass: a flag per field, its help the comment on its line.

Imports nothing heavy: the config is parsed and checked before MXNet loads.
"""
import argparse
import dataclasses
import inspect
import io
import shlex
import sys
import textwrap
import tokenize
import typing


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line: the usage is one --help away."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse(config_class, argv=None, prog=None, description=None, notes=None):
    """A config_class instance from argv; exit 2 with one line on an unknown flag or a bad value.

    notes: field name -> text appended to its help, for facts the comment cannot hold (computed defaults).
    """
    parser = Parser(prog=prog, description=description, allow_abbrev=False,
                    formatter_class=argparse.HelpFormatter)
    comments = _comments(config_class)
    for field in dataclasses.fields(config_class):
        _add_flag(parser, field, comments[field.name] + (f" ({notes[field.name]})" if field.name in (notes or {})
                                                         else ""))
    args = parser.parse_args(argv)
    try:
        return config_class(**vars(args))
    except ValueError as err:
        parser.error(str(err))


def flag(name):
    """The command-line flag of a config field: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def command_line(config, script):
    """The shell command that recreates config: the running interpreter, script, and each non-default field."""
    return " ".join(shlex.quote(word) for word in [sys.executable, script, *_changed(config)])


def summary(config, width=80):
    """config as the flags that differ from the defaults, in lines of at most width columns."""
    words = [shlex.quote(word) for word in _changed(config)] or ["(the defaults)"]
    return textwrap.wrap(" ".join(words), width, initial_indent="config: ", subsequent_indent="        ",
                         break_long_words=False, break_on_hyphens=False)


def _changed(config):
    words = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value == field.default:
            continue
        if isinstance(value, bool):
            words.append(flag(field.name) if value else "--no-" + flag(field.name)[2:])
        else:
            words += [flag(field.name), _typed(value)]
    return words


def _typed(value):
    """A value as it is typed on the command line: a tuple as 128,64."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _add_flag(parser, field, comment):
    kind, default = field.type, field.default
    choices = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else None
    shown = f" (default: {_typed(default)})" if default not in ("", None, ()) and kind is not bool else ""
    if kind is bool:
        # --fast on by default is turned off with --no-fast; a switch off by default is just --resume.
        action = argparse.BooleanOptionalAction if default else "store_true"
        parser.add_argument(flag(field.name), default=default, action=action,
                            help=_escape(comment + (" (default: on)" if default else "")))
    elif choices:
        parser.add_argument(flag(field.name), default=default, choices=choices, metavar="{" + ",".join(choices) + "}",
                            help=_escape(comment + shown))
    elif kind in (int, float, str):
        parser.add_argument(flag(field.name), default=default, type=kind, metavar=kind.__name__.upper(),
                            help=_escape(comment + shown))
    elif kind == typing.Tuple[int, ...]:
        parser.add_argument(flag(field.name), default=default, type=_int_tuple, metavar="N,N",
                            help=_escape(comment + shown))
    else:
        raise TypeError(f"{field.name}: no command-line form for {kind}")


def _escape(text):
    return text.replace("%", "%%")  # argparse %-formats help strings


def _comments(config_class):
    """Field name -> the comment on its line in the class's source."""
    tokens = tokenize.generate_tokens(io.StringIO(inspect.getsource(config_class)).readline)
    return {tok.line.split(":", 1)[0].strip(): tok.string.lstrip("# ")
            for tok in tokens if tok.type == tokenize.COMMENT}


def _int_tuple(text):
    try:
        return tuple(int(part) for part in text.split(",")) if text else ()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 128,64, got {text!r}") from None
