"""The command line: a training script's hyperparameter block becomes its flags, and a user's mistake one clear line.

  help_texts, parse_hyperparameters    every name of the block is a flag (--name value), typed like its default,
                                       its --help text the comment on its line
  Renamed, rename_hyperparameters      old flag names that still work (and old checkpoints' names)
  add_scaling_factor_argument          --scaling_factor (and its old name --scale) for the argparse scripts
  run_cli                              a script's main(): errors a user can cause become one line, not a traceback
"""
import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

def _parse_bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _parse_number(text):
    try:
        return int(text)
    except ValueError:
        return float(text)


def _parse_optional(text):
    """Flags whose default is None take a string, a number, or 'none'."""
    if text.lower() == "none":
        return None
    for number_type in (int, float):
        try:
            return number_type(text)
        except ValueError:
            pass
    return text


def _flag_arguments(default):
    """argparse's type / nargs / metavar for a flag whose default is `default` (its type follows the default)."""
    if isinstance(default, bool):
        return dict(type=_parse_bool, metavar="true|false")
    if isinstance(default, (list, tuple)):
        # numbers parse as int when written as one ("100000"), else float ("0.5", "2e-4")
        numeric = all(isinstance(value, (int, float)) for value in default)
        return dict(type=_parse_number if numeric else type(default[0]) if default else str, nargs="*")
    if default is None:
        return dict(type=_parse_optional)
    return dict(type=type(default))


class Renamed(NamedTuple):
    """A hyperparameter under its old name, kept so that old command lines and checkpoints still work.

    new: the hyperparameter that replaced it. convert: None when only the name changed; else a function
    (old value, the other hyperparameters as a dict) -> the new hyperparameter's value. example: a value of the
    old flag's type, when it differs from the new one's. note: what to tell the user (default: "use --<new>").
    """
    new: str
    convert: Optional[Callable] = None
    example: Any = None
    note: Optional[str] = None


# Hyperparameters of both training scripts that were renamed: `lr` now always means low resolution (lr_imgs,
# lr_maker), and the learning rate is spelled out.
RENAMED_HYPERPARAMETERS = {"lr": "learning_rate", "lr_milestones": "learning_rate_milestones",
                           "lr_gamma": "learning_rate_gamma"}


def _as_renamed(alias):
    return alias if isinstance(alias, Renamed) else Renamed(alias)


class _DeprecatedFlag(argparse.Action):
    """An old flag that still works: it says on stderr what replaced it, and stores its value."""

    def __init__(self, option_strings, dest, replaced_by, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.replaced_by = replaced_by

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is deprecated, {self.replaced_by}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def help_texts(source_files, names):
    """
    The --help text of each hyperparameter: the comment at the end of its line in a hyperparameter block, and the
    comment lines right below it that start with '#   ' (three spaces: a long comment wrapped onto the next line),

        crop_size=96,  # side of the HR training crops                (a dict(...) block, as in the training scripts)
        "noise_range": [1, 30],  # Gaussian sigma, in 8-bit levels    (a {...} block, as degradations.py's)
        lr_maker="pil",  # how LR crops are made from HR: 'pil' (Pillow's bicubic) or 'matlab'
        #   (MATLAB's imresize)

    so that the block a reader sees at the top of a script is also the help a user sees.

    :param source_files: a file, or a list of files, holding the blocks (None: no help texts)
    :param names: the hyperparameters to find
    :return: dict name -> comment (the first found, for names that have one)
    """
    files = [] if source_files is None else [source_files] if isinstance(source_files, (str, Path)) else source_files
    comments, last = {}, None  # last: the hyperparameter whose comment a '#   ' line continues
    for path in files:
        for line in Path(path).read_text().splitlines():
            continued = re.match(r"\s*#   (.*)$", line)
            if continued and last is not None:
                comments[last] += " " + continued.group(1).strip()
                continue
            match = re.match(r"\s*\"?(\w+)\"?\s*[=:].*?#\s*(.*)$", line)  # name=value, # ... or "name": value, # ...
            last = match.group(1) if match and match.group(1) in names and match.group(1) not in comments else None
            if last is not None:
                comments[last] = match.group(2)
    return comments


def parse_hyperparameters(defaults, description, script_path=None, argv=None, aliases=None):
    """
    Make every hyperparameter in `defaults` a command-line flag of the same name.

    A flag's type follows its default (int, float, bool as true/false, list as several values, None as
    text / number / 'none'); its help text is the comment on the hyperparameter's line in the script.

    :param defaults: dict name -> default value (the script's hyperparameters)
    :param description: text for --help (the script's docstring)
    :param script_path: the script's file (or a list of files), to read the comments from (help_texts)
    :param aliases: dict old name -> new name (or a Renamed): old flags that still work, say what replaced them on
                    stderr, and set the new hyperparameter; --help does not list them
    :return: Hyperparameters (an argparse.Namespace) with one attribute per hyperparameter, and in `given` the names
             of those set on the command line (a resumed run needs to know: see reconcile_resumed_hyperparameters)
    """
    comments = help_texts(script_path, defaults)
    # allow_abbrev=False: argparse would otherwise take a prefix of a flag for the flag (train_srgan.py's --n_blocks 2
    # would silently set --n_blocks_d, the discriminator's); every flag must be given whole.
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in defaults.items():
        help_text = f"{comments.get(name, '')} (default: {default})".replace("%", "%%")
        parser.add_argument(f"--{name}", default=default, help=help_text, **_flag_arguments(default))
    converted = {}
    for old, alias in (aliases or {}).items():
        alias = _as_renamed(alias)
        # A plain rename stores straight into the new hyperparameter; a conversion waits until everything is parsed.
        dest = alias.new if alias.convert is None else f"deprecated_{old}"
        if alias.convert is not None:
            converted[dest] = alias
        example = defaults[alias.new] if alias.example is None else alias.example
        parser.add_argument(f"--{old}", dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                            action=_DeprecatedFlag, replaced_by=alias.note or f"use --{alias.new}",
                            **_flag_arguments(example))
    # Parsed into a namespace that holds a marker for every hyperparameter: argparse then leaves the markers of the
    # flags not given (instead of writing their defaults), which tells the given ones apart.
    not_given = object()
    hp = parser.parse_args(argv, namespace=Hyperparameters(**{name: not_given for name in defaults}))
    hp.given = {name for name, value in vars(hp).items() if value is not not_given and name in defaults}
    for name, default in defaults.items():
        if getattr(hp, name) is not_given:
            setattr(hp, name, default)
    for dest, alias in converted.items():
        if hasattr(hp, dest):
            value = getattr(hp, dest)
            delattr(hp, dest)
            setattr(hp, alias.new, alias.convert(value, vars(hp)))
            hp.given.add(alias.new)
    return hp


class Hyperparameters(argparse.Namespace):
    """The hyperparameters of a training script, one attribute each (what parse_hyperparameters returns).

    `given` (a set of names: the hyperparameters set on the command line) sits in a slot, outside vars(hp), so that
    vars(hp), which checkpoints store, holds the hyperparameters alone."""
    __slots__ = ("given",)


def rename_hyperparameters(saved, aliases):
    """The hyperparameters of an older checkpoint under today's names (`aliases` as for parse_hyperparameters)."""
    saved = dict(saved)
    for old, alias in (aliases or {}).items():
        alias = _as_renamed(alias)
        if old in saved:
            value = saved.pop(old)
            saved[alias.new] = value if alias.convert is None else alias.convert(value, saved)
    return saved


def add_scaling_factor_argument(parser, **kwargs):
    """--scaling_factor (the one name of the upscaling factor in every script) for an argparse script, and its old
    name --scale, which still works and says so."""
    parser.add_argument("--scaling_factor", type=int, **kwargs)
    parser.add_argument("--scale", dest="scaling_factor", type=int, choices=kwargs.get("choices"),
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS, action=_DeprecatedFlag,
                        replaced_by="use --scaling_factor")

def run_cli(main):
    """
    Run a script's main(), turning the errors a user can cause into one clear line and a non-zero exit.

    FileNotFoundError / ValueError / RuntimeError raised by our code carry a message that says what to do;
    a traceback would only hide it. Set SR_DEBUG=1 to see the full traceback.
    """
    try:
        main()
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        if os.environ.get("SR_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
