"""Shared command-line plumbing: logging set-up, the bad-input exit path, SIGTERM, and the
options and click classes every command shares (``-h``, ``--version``, ``-v``, ``--device``,
``--workdir``); :func:`tool_command` puts the usual set on a command in one line."""

import contextlib
import functools
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from drac_algo.common.errors import DracInputError
from drac_algo.common.provenance import environment, version_line

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=LOG_FORMAT,
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


class _AppendNoFollow(logging.FileHandler):
    """A log file opened for appending, never through a symbolic link (``O_NOFOLLOW``: a link
    there is an ``OSError``), so a log inside a run folder cannot write outside it."""

    def _open(self) -> Any:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.baseFilename, flags, 0o666)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


def add_log_file(path: Path) -> logging.Handler:
    """Also write every log record the console shows to ``path`` (appended, with the date in each
    timestamp, since a run folder outlives the day it ran; never through a link). Returns the
    handler, for a caller that wants to detach it again (``logging.getLogger().removeHandler``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _AppendNoFollow(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    handler.setLevel(root.level)
    root.addHandler(handler)
    return handler


@contextlib.contextmanager
def run_log(path: Path, program: str) -> Iterator[None]:
    """Mirror the log into ``path`` for the duration of a run (see :func:`add_log_file`). Two
    lines go to the file only: first :func:`provenance.version_line` with the environment (too
    long for the console, and written even when logging is not set up), and at the end, when the
    run fails, the error that the console shows as ``error: ...`` (from
    :func:`exits_on_bad_input`)."""
    handler = add_log_file(path)
    log = logging.getLogger(program)

    def to_file(level: int, message: str) -> None:
        handler.handle(log.makeRecord(log.name, level, __file__, 0, message, (), None))

    to_file(logging.INFO, f"{version_line(program)}; {json.dumps(environment(), sort_keys=True)}")
    try:
        yield
    except BaseException as exc:
        to_file(logging.ERROR, f"error: {exc}" if str(exc) else f"error: {type(exc).__name__}")
        raise
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt (a BaseException, so no
    ``except Exception`` swallows it): cleanups run and partial outputs are removed."""


TERMINATED_EXIT = 128 + signal.SIGTERM  # 143, the shell's status for a process ended by SIGTERM


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def exits_on_bad_input(func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command so that a :class:`DracInputError` prints ``error: <message>`` on stderr and
    exits with status 2 instead of a traceback, and SIGTERM (``docker stop``, a job's time limit)
    unwinds like an exception, so every atomic write removes its partial file, and then exits
    143 with one line saying so (Python's default would end at once and silently)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return func(*args, **kwargs)
        except DracInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except Terminated:
            print(
                "error: terminated by SIGTERM; outputs being written were removed",
                file=sys.stderr,
            )
            raise SystemExit(TERMINATED_EXIT) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


# --- The options every command shares (issue 12): one spelling, one meaning, one check. ---

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
DEVICE_SPELLINGS = "auto, cpu, cuda or cuda:N (N a GPU index, e.g. cuda:0)"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def parse_device(value: str) -> str:
    """``value`` checked and normalised (trimmed, lower case): "auto", "cpu", "cuda" or
    "cuda:N". Says nothing about whether that device exists: the command that uses it checks
    that, once torch is imported. Raises :class:`DracInputError` for any other spelling."""
    device = value.strip().lower()
    if not _DEVICE.fullmatch(device):
        raise DracInputError(f"--device: expected {DEVICE_SPELLINGS}, found {value!r}")
    return device


class DeviceType(click.ParamType):
    """``--device`` of every command, checked by :func:`parse_device` while parsing."""

    name = "device"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "auto|cpu|cuda|cuda:N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return parse_device(str(value))
        except DracInputError as exc:
            self.fail(str(exc).removeprefix("--device: "), param, ctx)


DEVICE = DeviceType()


def device_option(help: str = "auto = CUDA when available, else the CPU.") -> Callable:
    return click.option("--device", type=DEVICE, default="auto", show_default=True, help=help)


_VERBOSE = ("-v", "--verbose")
_VERBOSE_SETTINGS: dict[str, Any] = {"is_flag": True, "help": "Debug logging."}


def verbose_option(func: Callable) -> Callable:
    return click.option(*_VERBOSE, **_VERBOSE_SETTINGS)(func)


def _version_settings(program: str) -> dict[str, Any]:
    def show(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            click.echo(version_line(program))
            ctx.exit()

    return {
        "is_flag": True,
        "expose_value": False,
        "is_eager": True,
        "callback": show,
        "help": "Show the version (and torch's, with its CUDA build) and exit.",
    }


def version_option(program: str) -> Callable:
    """``--version``: print :func:`provenance.version_line` (which imports torch, for its CUDA
    build, only when the option is used) and exit."""
    return click.option("--version", **_version_settings(program))


def tool_command(program: str) -> Callable[[Callable[..., Any]], click.Command]:
    """``@tool_command("drac-synth")`` above a command function and its own options: the
    :class:`Command` every logging command is, with ``-v/--verbose`` (:func:`setup_logging`
    runs before the function, which does not take ``verbose``), ``--version`` (both listed
    last in ``--help``) and the bad-input exit path of :func:`exits_on_bad_input`."""

    def decorate(func: Callable[..., Any]) -> click.Command:
        @functools.wraps(func)
        def run(*args: Any, verbose: bool, **kwargs: Any) -> Any:
            setup_logging(verbose)
            return func(*args, **kwargs)

        command = click.command(cls=Command)(exits_on_bad_input(run))
        command.params.append(click.Option(list(_VERBOSE), **_VERBOSE_SETTINGS))
        command.params.append(click.Option(["--version"], **_version_settings(program)))
        return command

    return decorate


def workdir_option(default: str, help: str) -> Callable:
    """``--workdir``: the folder a tool makes its data, runs and report in."""
    return click.option(
        "--workdir",
        type=click.Path(path_type=Path, file_okay=False),
        default=Path(default),
        show_default=True,
        help=help,
    )


class UsageError(click.UsageError):
    """A command-line mistake click found (unknown option, bad value, missing argument), shown
    as ``error: ...`` like every other bad input; exit status 2."""

    def show(self, file: Any = None) -> None:
        echo = functools.partial(click.echo, file=file, err=file is None)
        if self.ctx is not None:
            hint = f"Try '{self.ctx.command_path} -h' for help."
            echo(f"{self.ctx.get_usage()}\n{hint}\n", color=self.ctx.color)
        echo(f"error: {self.format_message()}")


def _as_usage_error(exc: click.UsageError) -> click.UsageError:
    if isinstance(exc, (UsageError, click.exceptions.NoArgsIsHelpError)):
        return exc
    return UsageError(exc.format_message(), exc.ctx)


class _SharedSettings:
    """For a click command class: the shared context settings (``-h``, 100 columns) and usage
    errors that read ``error: ...``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["context_settings"] = {**CONTEXT_SETTINGS, **(kwargs.get("context_settings") or {})}
        super().__init__(*args, **kwargs)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise _as_usage_error(exc) from None


class Command(_SharedSettings, click.Command):
    """A command with the shared settings: ``@click.command(cls=Command)``."""


class Group(_SharedSettings, click.Group):
    """A command with subcommands and the shared settings (``@click.group(cls=Group)``); its
    subcommands are :class:`Command` s, and an unknown one is ``error: No such command``."""

    command_class = Command

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            raise _as_usage_error(exc) from None
