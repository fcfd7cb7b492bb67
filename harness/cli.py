"""The command line, generated from a config dataclass: a flag per field, with its comment."""
# Imports nothing heavy: the config is parsed and checked before MXNet loads.
import argparse
import dataclasses
import difflib
import inspect
import re
import shlex
import sys
import textwrap
import typing

from harness.checks import flag

# Old flag -> the field that replaced it; the old one still works, with a notice.
RENAMED = {"--loss": "gradient"}


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (the usage is one --help away)."""
    # With the nearest flag to a typo.

    def error(self, message):
        unknown = message.split("unrecognized arguments: ", 1)
        if len(unknown) == 2:
            message += _suggestion(unknown[1].split()[0], self._option_string_actions)
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse(config_class, argv=None, prog=None, description=None, notes=None):
    """(config_class instance, notices) from argv."""
    # Exit 2 with one line on an unknown flag or a bad value.
    # notes: field name -> text appended to its help, for facts the comment cannot hold (computed
    # defaults). notices: lines to show, such as that a renamed flag was used.
    parser = Parser(prog=prog, description=description, allow_abbrev=False)
    comments = _comments(config_class)
    for field in dataclasses.fields(config_class):
        note = f" ({notes[field.name]})" if field.name in (notes or {}) else ""
        _add_flag(parser, field, comments.get(field.name, "") + note)
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, notices = _renamed(argv)
    args = parser.parse_args(argv)
    try:
        return config_class(**vars(args)), notices
    except ValueError as err:
        parser.error(str(err))


def command_line(config, script, launcher=()):
    """The shell command that recreates config."""
    # Launcher's words, the interpreter, script, non-defaults.
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


def _renamed(argv):
    """argv with each renamed flag replaced by its new name, and a notice for each."""
    out, notices = [], []
    for word in argv:
        name, equals, value = word.partition("=")
        if name in RENAMED:
            new = flag(RENAMED[name])
            notices.append(f"notice: {name} is now {new} (the loss's gradient); {name} still works")
            word = new + equals + value
        out.append(word)
    return out, notices


def _suggestion(word, options):
    name = word.split("=", 1)[0]
    close = difflib.get_close_matches(
        name, [o for o in options if o.startswith("--")], n=1, cutoff=0.6
    )
    if not close:
        # --epochs for --num-epochs: the flag that ends like it.
        close = [o for o in options if o.startswith("--") and o.endswith("-" + name.lstrip("-"))][
            :1
        ]
    return f" (did you mean {close[0]}?)" if close else ""


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


def _add_flag(parser, field, comment):
    kind, default = field.type, field.default
    choices = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else None
    shown = (
        f" (default: {_typed(default)})"
        if default not in ("", None, ()) and kind is not bool
        else ""
    )
    name = flag(field.name)
    if kind is bool:
        if default:
            # --fast, on by default, is turned off with --no-fast (by hand: Python 3.8's argparse
            # lacks BooleanOptionalAction).
            parser.add_argument(name, dest=field.name, default=default, action="store_true",
                                help=_escape(comment + " (default: on)"))
            parser.add_argument("--no-" + name[2:], dest=field.name, action="store_false",
                                help=argparse.SUPPRESS)
        else:
            # A switch off by default is just --resume.
            parser.add_argument(name, default=default, action="store_true", help=_escape(comment))
    elif choices:
        parser.add_argument(
            name,
            default=default,
            choices=choices,
            metavar="{" + ",".join(choices) + "}",
            help=_escape(comment + shown),
        )
    elif kind is float and default is None:
        parser.add_argument(name, default=default, type=_optional_float, metavar="FLOAT",
                            help=_escape(comment + shown))
    elif kind in (int, float, str):
        parser.add_argument(name, default=default, type=kind, metavar=kind.__name__.upper(),
                            help=_escape(comment + shown))
    elif kind == typing.Tuple[int, ...]:
        parser.add_argument(name, default=default, type=_int_tuple, metavar="N,N",
                            help=_escape(comment + shown))
    elif kind == typing.Tuple[str, ...]:
        parser.add_argument(name, default=default, type=str, nargs="+", metavar="FILE",
                            help=_escape(comment + shown))
    else:
        raise TypeError(f"{field.name}: no command-line form for {kind}")


def _escape(text):
    # argparse %-formats help strings.
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
