"""Logging set-up (loguru) and a guard against logging the same failure every sync.

Log calls are a constant message plus fields: ``logger.warning("cannot bind", address=a)``.
Three formats:

- ``text`` (default, kube-proxy's): klog's text format, so that what parses kube-proxy's
  logs parses these: ``W1203 19:26:21.123456    4242 daemon.py:140] "cannot bind"
  address="10.96.0.1"`` (level letter I/W/E/F, month and day, time to the microsecond,
  the PID in 7 columns, file:line, the message quoted, then key=value: strings quoted,
  numbers and booleans bare, a multi-line value as ``key=<`` lines ``>``).
- ``json`` (kube-proxy's ``--logging-format=json``): klog's JSON, ``{"ts": <milliseconds
  since the epoch>, "caller": "dir/file.py:line", "msg": ..., "v": N, <fields>}``; an
  error has no ``v`` and carries ``err`` last.
- ``console``: the short format for a person at a terminal, ``12:00:00.123 WARNING cannot
  bind address=10.96.0.1``.

The default is klog's text because ipvsproxy replaces kube-proxy in a DaemonSet whose
logs already flow into a pipeline (fluent-bit's, Loki's, a SIEM's) built for klog's
lines: the level letter and the quoted message are what its parsers and alerts key on.
In every format a field whose value the message already spells out (a ``{key}``
template) is not repeated.

Verbosity follows kube-proxy's ``-v N`` (klog): below 4 INFO, 4-5 DEBUG, 6 and above TRACE.

``RepeatedLog`` logs a message the first time, then swallows repeats and logs it again at
most once per interval with ``repeated=N`` (how many times it happened since it was last
logged), so a failure that recurs on every sync is one line, not a flood.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Final, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message, Record

__all__ = [
    "FORMATS",
    "RepeatedLog",
    "add_logging_arguments",
    "configure_logging",
    "console_format",
    "klog_json_line",
    "klog_line",
    "level_for_verbosity",
    "logging_from_arguments",
]

FORMATS: Final = ("text", "json", "console")
# loguru's levels as klog's severity letters; TRACE and DEBUG are klog's V(6) and V(4)
# info lines (see level_for_verbosity).
_KLOG_SEVERITY: Final = {"WARNING": "W", "ERROR": "E", "CRITICAL": "F"}
_KLOG_V: Final = {"TRACE": 6, "DEBUG": 4}
_LEVELS: Final = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR")
_WORD_BREAKS: Final = re.compile(r"[\s:,()'\"]+")


def _words(text: str) -> set[str]:
    return set(_WORD_BREAKS.split(text)) - {""}


def _fields(record: Record) -> list[tuple[str, object]]:
    """The record's fields but those whose value the message spells out word for word (a
    "{key}" template)."""
    words = _words(record["message"])
    return [
        (key, value)
        for key, value in record["extra"].items()
        if not _words(str(value)) or not _words(str(value)) <= words
    ]


def console_format(record: Record) -> str:
    """loguru format function of the console format."""
    # The message, then its fields as key=value (escaped for loguru's format).
    fields = " ".join(f"{key}={value}" for key, value in _fields(record))
    fields = fields.replace("{", "{{").replace("}", "}}")
    suffix = "\n{exception}" if record["exception"] else "\n"
    return "{time:HH:mm:ss.SSS} {level: <7} {message}" + (f" {fields}" if fields else "") + suffix


def _traceback(record: Record) -> str | None:
    exception = record["exception"]
    if exception is None or exception.type is None:
        return None
    import traceback

    return "".join(
        traceback.format_exception(exception.type, exception.value, exception.traceback)
    ).rstrip()


def _klog_value(value: object) -> str:
    """klog's text rendering of a value: strings (and anything not a number, boolean,
    list or mapping) quoted, a multi-line string as <...>, the rest as JSON."""
    if isinstance(value, bool | int | float) or value is None:
        return json.dumps(value)
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str, ensure_ascii=False)
    text = str(value)
    if "\n" in text:
        body = "".join(f"\t{line}\n" for line in text.rstrip("\n").split("\n"))
        return f"<\n{body} >"
    return json.dumps(text, ensure_ascii=False)


def klog_line(record: Record) -> str:
    """One record in klog's text format (no trailing newline)."""
    level = record["level"].name
    when = record["time"]
    header = (
        f"{_KLOG_SEVERITY.get(level, 'I')}{when:%m%d %H:%M:%S}.{when.microsecond:06d} "
        f"{record['process'].id:7d} {record['file'].name}:{record['line']}] "
    )
    fields = _fields(record)
    trace = _traceback(record)
    if trace is not None:
        fields.append(("err", trace))
    parts = [json.dumps(record["message"], ensure_ascii=False)]
    parts += [f"{key}={_klog_value(value)}" for key, value in fields]
    return header + " ".join(parts)


def _caller(record: Record) -> str:
    # zap's ShortCallerEncoder: the file's directory and name, and the line.
    path = record["file"].path.replace("\\", "/").split("/")
    return f"{'/'.join(path[-2:])}:{record['line']}"


def klog_json_line(record: Record) -> str:
    """One record in klog's JSON format (no trailing newline): ts in milliseconds since
    the epoch, caller, msg, then v for an info line (none for an error), the fields, and
    err last for an error."""
    level = record["level"].name
    error = level in ("ERROR", "CRITICAL")
    body: dict[str, object] = {
        "ts": record["time"].timestamp() * 1000.0,
        "caller": _caller(record),
        "msg": record["message"],
    }
    if not error:
        body["v"] = _KLOG_V.get(level, 0)
    err: object = None
    for key, value in _fields(record):
        if error and key in ("err", "error"):
            err = value
            continue
        body[key if key not in body else f"field.{key}"] = value
    trace = _traceback(record)
    if trace is not None:
        err = f"{err}\n{trace}" if err is not None else trace
    if err is not None:
        body["err"] = err
    return json.dumps(body, default=str, ensure_ascii=False)


def _line_sink(stream: TextIO, line: Callable[[Record], str]) -> Callable[[Message], None]:
    def write(message: Message) -> None:
        stream.write(line(message.record) + "\n")
        stream.flush()

    return write


def level_for_verbosity(verbosity: int) -> str:
    """kube-proxy's -v N as a loguru level: klog's V(4) is debug output, V(6) and up trace."""
    if verbosity >= 6:
        return "TRACE"
    if verbosity >= 4:
        return "DEBUG"
    return "INFO"


def configure_logging(
    *, level: str = "INFO", fmt: str = "text", stream: TextIO | None = None
) -> None:
    """Send every record at ``level`` or above to ``stream`` (default: sys.stderr as it is
    now, so a test's captured stderr works) in format ``fmt`` (one of FORMATS)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    stream = sys.stderr if stream is None else stream
    logger.remove()
    if fmt == "json":
        logger.add(_line_sink(stream, klog_json_line), level=level, format="{message}")
    elif fmt == "text":
        logger.add(_line_sink(stream, klog_line), level=level, format="{message}")
    else:
        logger.add(stream, level=level, format=console_format)


def add_logging_arguments(parser: argparse.ArgumentParser, *, top_level: bool = True) -> None:
    """Add --log-level, --logging-format (or --log-format), -v/--v and --vmodule to
    ``parser``.

    Give every subcommand's parser the same options with ``top_level=False`` (defaults
    suppressed) so ``ipvsproxy run --v=4`` works as well as ``ipvsproxy --v=4 run``.
    """
    default = (lambda value: value) if top_level else (lambda _value: argparse.SUPPRESS)
    parser.add_argument(
        "--log-level",
        default=default(None),
        type=str.upper,
        choices=_LEVELS,
        help="minimum level logged (default INFO; overrides -v)",
    )
    parser.add_argument(
        "--logging-format",
        "--log-format",
        dest="log_format",
        default=default("text"),
        choices=FORMATS,
        help="text (klog's, the default), json (klog's) or console (short, for a terminal)",
    )
    parser.add_argument(
        "--vmodule",
        default=default(None),
        type=_module_spec,
        metavar="PATTERN=N,...",
        help="kube-proxy's per-file verbosity: accepted and checked, not applied (-v is)",
    )
    parser.add_argument(
        "-v",
        "--v",
        dest="verbosity",
        type=int,
        default=default(0),
        metavar="N",
        help="verbosity as kube-proxy's: 4 and up logs debug output, 6 and up trace",
    )


def _module_spec(text: str) -> str:
    # klog's pattern=N,...: each pattern non-empty and N a non-negative integer.
    for part in filter(None, text.split(",")):
        pattern, sep, level = part.partition("=")
        if not sep or not pattern or not level.isdigit():
            raise argparse.ArgumentTypeError(f"--vmodule {part!r}: expected pattern=N")
    return text


def logging_from_arguments(args: argparse.Namespace) -> None:
    """configure_logging from the options add_logging_arguments added."""
    level = args.log_level or level_for_verbosity(args.verbosity)
    configure_logging(level=level, fmt=args.log_format)


class RepeatedLog:
    """Logs a message once, then at most once per ``interval`` seconds with a count.

    Use one instance per loop: ``repeats.error("sync failed", reason=r)``. A message is
    known by its level, text and fields unless a ``key`` is given (use one when a field
    changes every time, a duration say). The first occurrence is logged; repeats within
    ``interval`` are counted; the first repeat after ``interval`` is logged with
    ``repeated=N``, N counting the occurrences since it was last logged (itself included).
    ``clear()`` forgets everything (call it when the loop recovers, so the next failure
    is logged at once). At most ``max_keys`` messages are remembered; the least recently
    seen are forgotten first. ``clock``: seconds, monotonic (injectable for tests).
    """

    def __init__(
        self,
        *,
        interval: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        # key -> (when last logged, occurrences since then, the last one included)
        self._seen: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def log(
        self, level: str, message: str, /, *, key: Hashable | None = None, **fields: object
    ) -> bool:
        """Log ``message`` with ``fields`` unless it is a repeat; True if it was logged."""
        return self._log(level, message, key=key, depth=2, fields=fields)

    def _log(
        self,
        level: str,
        message: str,
        *,
        key: Hashable | None,
        depth: int,
        fields: dict[str, object],
    ) -> bool:
        # depth: frames between the caller and logger's call, so that the line names
        # the caller's file and line, not this module's.
        if key is None:
            key = (level, message, tuple(sorted((k, repr(v)) for k, v in fields.items())))
        now = self._clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is None:
                repeated = 0
            elif now - entry[0] >= self.interval:
                repeated = entry[1] + 1
            else:
                self._seen[key] = (entry[0], entry[1] + 1)
                self._seen.move_to_end(key)
                return False
            self._seen[key] = (now, 0)
            self._seen.move_to_end(key)
            while len(self._seen) > self._max_keys:
                self._seen.popitem(last=False)
        if repeated:
            fields = {**fields, "repeated": repeated}
        logger.opt(depth=depth).log(level, message, **fields)
        return True

    def warning(self, message: str, /, *, key: Hashable | None = None, **fields: object) -> bool:
        return self._log("WARNING", message, key=key, depth=2, fields=fields)

    def error(self, message: str, /, *, key: Hashable | None = None, **fields: object) -> bool:
        return self._log("ERROR", message, key=key, depth=2, fields=fields)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
