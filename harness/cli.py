"""The command line, generated from a config dataclass: a flag per field, with its comment."""
# Imports nothing heavy: the config is parsed and checked before MXNet loads.
import argparse
import copy
import dataclasses
import difflib
import inspect
import re
import shlex
import sys
import textwrap
import typing

from harness import example_flags
from harness.checks import flag

_EPILOG = (
    "Flags of MXNet's train_mnist.py and PyTorch's examples/mnist that mean the same here are "
    "taken too (each is named after 'also'); any other of theirs is answered with this trainer's "
    "way to the same thing."
)


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (the usage is one --help away), with a way on.

    A flag of MXNet's or PyTorch's MNIST example that this trainer lacks is answered with its way to
    the same thing (example_flags.ANSWERS); any other unknown flag gets the nearest flag, if one is
    near.
    """

    def error(self, message):
        unknown = message.split("unrecognized arguments: ", 1)
        if len(unknown) == 2:
            words = unknown[1].split()
            answers = [line for line in map(example_flags.answer, words) if line]
            if answers:
                message = answers[0]
            else:
                message += _suggestion(words[0], self._option_string_actions)
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse(config_class, argv=None, prog=None, description=None, notes=None):
    """An instance of config_class from argv (sys.argv's words by default).

    Exits 2 with one line on an unknown flag or a bad value. notes: field name -> text added to its
    help, for facts its comment cannot hold (computed defaults).
    """
    parser = Parser(prog=prog, description=description, epilog=_EPILOG, allow_abbrev=False,
                    formatter_class=_Formatter)
    comments = _comments(config_class)
    for field in dataclasses.fields(config_class):
        extras = [notes[field.name]] if field.name in (notes or {}) else []
        _add_flag(parser, field, comments.get(field.name, ""), extras)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return config_class(**vars(args))
    except ValueError as err:
        parser.error(str(err))


def command_line(config, script, launcher=()):
    """The shell command that recreates config.

    Launcher's words, the interpreter, script, non-defaults.
    """
    words = [shlex.quote(word) for word in (*launcher, sys.executable, script)]
    return " ".join(words + _changed(config))


def summary(config, width=80):
    """config as the flags that differ from the defaults, in lines of at most width columns."""
    words = _changed(config, most=3) or ["(the defaults)"]
    return textwrap.wrap(
        " ".join(words),
        width,
        initial_indent="config: ",
        subsequent_indent="        ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def _suggestion(word, options):
    """' (did you mean --flag?)' for the flag nearest to word, or '' if none is near.

    The flags are options' and those of the examples that example_flags answers: a typo of one of
    these gets its answer. Names are compared without their dashes, which every flag shares.
    """
    if not word.startswith("-"):
        return ""
    name = word.split("=", 1)[0].lstrip("-")
    known = {o.lstrip("-"): o for o in [*options, *example_flags.ANSWERS] if o.startswith("--")}
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    # --hidden for --num-hidden: the flag that ends like it.
    close = close or [other for other in known if other.endswith("-" + name)][:1]
    if not close:
        return ""
    nearest = known[close[0]]
    answer = example_flags.answer(nearest)
    return f" (did you mean {nearest}? {answer})" if answer else f" (did you mean {nearest}?)"


def _changed(config, most=None):
    """The flags and values that differ from config's defaults; file lists cut at most files."""
    words = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value == field.default:
            continue
        if isinstance(value, bool):
            words.append(flag(field.name) if value else "--no-" + flag(field.name)[2:])
        elif isinstance(value, tuple) and value and isinstance(value[0], str):
            shown = value if most is None else value[:most]
            words += [flag(field.name), *map(shlex.quote, shown)]
            if len(shown) < len(value):
                words.append(f"and {len(value) - len(shown)} more")
        else:
            words += [flag(field.name), shlex.quote(_typed(value))]
    return words


def _typed(value):
    """A value as it is typed on the command line: a tuple as 128,64."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _add_flag(parser, field, comment, extras):
    """Add field's flag to parser, with its aliases; its help: comment, then extras in brackets."""
    kind, default = field.type, field.default
    aliases = [alias for alias, target in example_flags.ALIASES.items() if target == field.name]
    if kind is bool:
        _add_switch(parser, field, comment, extras, aliases)
        return
    shown = [f"default: {_typed(default)}"] if default not in ("", None, ()) else []
    text = _help(comment, extras + shown + [f"also {alias}" for alias in aliases])
    choices = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else None
    if choices:
        options = dict(choices=choices, metavar="{" + ",".join(choices) + "}")
    elif kind is float and default is None:
        options = dict(type=_optional_float, metavar="FLOAT")
    elif kind in (int, float, str):
        options = dict(type=kind, metavar=kind.__name__.upper())
    elif kind == typing.Tuple[int, ...]:
        options = dict(type=_int_tuple, metavar="N,N")
    elif kind == typing.Tuple[str, ...]:
        options = dict(type=str, nargs="+", metavar="FILE")
    else:
        raise TypeError(f"{field.name}: no command-line form for {kind}")
    parser.add_argument(flag(field.name), *aliases, dest=field.name, default=default, help=text,
                        **options)


def _add_switch(parser, field, comment, extras, aliases):
    """Add a bool field's switch: --resume; one on by default also gets --no-fast to turn it off.

    Python 3.8's argparse lacks BooleanOptionalAction, so the --no- form is added by hand. An alias
    takes a value, 1 for on or 0 for off, as MXNet's --test-io does.
    """
    name = flag(field.name)
    notes = extras + (["default: on"] if field.default else []) + [f"also {a} 1" for a in aliases]
    parser.add_argument(name, dest=field.name, default=field.default, action="store_true",
                        help=_help(comment, notes))
    if field.default:
        parser.add_argument("--no-" + name[2:], dest=field.name, action="store_false",
                            help=argparse.SUPPRESS)
    for alias in aliases:
        parser.add_argument(alias, dest=field.name, type=_on_or_off, metavar="{0,1}",
                            default=argparse.SUPPRESS, help=argparse.SUPPRESS)


class _Formatter(argparse.HelpFormatter):
    """argparse's help, with each flag under its own name alone: its aliases follow 'also'."""

    def _format_action_invocation(self, action):
        own = [name for name in action.option_strings if name not in example_flags.ALIASES]
        if own != action.option_strings:
            action = copy.copy(action)
            action.option_strings = own
        return super()._format_action_invocation(action)


def _help(comment, notes):
    """comment, then notes in brackets, escaped for argparse's %-formatting."""
    text = comment + (f" ({'; '.join(notes)})" if notes else "")
    return text.replace("%", "%%")


def _comments(config_class):
    """Field name -> the comment on the lines just above it in the class's source."""
    comments, pending = {}, []
    for line in inspect.getsource(config_class).splitlines():
        text = line.strip()
        field = re.match(r"(\w+)\s*:", text)
        if text.startswith("#"):
            pending.append(text.lstrip("#").strip())
        elif field and pending:
            comments[field.group(1)] = " ".join(pending)
            pending = []
        else:
            pending = []
    return comments


def _on_or_off(text):
    """A switch's value given as a number, as MXNet's examples give theirs: 1 on, 0 off."""
    if text not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"expected 1 (on) or 0 (off), got {text!r}")
    return text == "1"


def _optional_float(text):
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number, or nothing for the default; got {text!r}"
        ) from None


def _int_tuple(text):
    try:
        return tuple(int(part) for part in text.split(",")) if text else ()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 128,64, got {text!r}"
        ) from None
