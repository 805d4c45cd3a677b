"""Settings declared once: a dataclass field carries its default, its --help text and its
range, and the CLI's options are made from it (cli.options_of)."""

from __future__ import annotations

from dataclasses import field


def setting(
    default,
    help: str,
    choices=None,
    minimum=None,
    below=None,
    type=None,
    cli: bool = True,
    shown: str | None = None,
):
    """A settings field.

    choices: the allowed names; minimum: the smallest allowed value; below: values must be
    below it; type: the values' type when the default is None; cli: whether it is an option;
    shown: the default as --help shows it, when the option's own default is None.
    """
    meta = dict(help=help, choices=choices, minimum=minimum, below=below, type=type)
    return field(default=default, metadata=meta | dict(cli=cli, shown=shown))


def kind(f) -> type:
    """The Python type of a setting's values."""
    return f.metadata["type"] or type(f.default)


def same_kind(value, f) -> bool:
    """Whether a saved setting has its declared type (an int may stand for a float)."""
    kinds = (int, float) if kind(f) is float else (kind(f),)
    return isinstance(value, kinds) and not isinstance(value, bool)
