"""Logging set-up (loguru) and a guard against logging the same failure every sync.

Log calls are a constant message plus fields: ``logger.warning("cannot bind", address=a)``.
Two formats:

- ``text`` (default): ``12:00:00.123 WARNING cannot bind address=10.96.0.1``; a field whose
  value the message already spells out (a ``{key}`` template) is not repeated.
- ``json``: one object per line, ``{"time": ..., "level": ..., "msg": ..., <fields>}``,
  for log collectors; an exception adds ``exception`` with its traceback.

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
    "json_line",
    "level_for_verbosity",
    "logging_from_arguments",
    "text_format",
]

FORMATS: Final = ("text", "json")
_LEVELS: Final = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR")
_WORD_BREAKS: Final = re.compile(r"[\s:,()'\"]+")


def _words(text: str) -> set[str]:
    return set(_WORD_BREAKS.split(text)) - {""}


def text_format(record: Record) -> str:
    """loguru format function of the text format."""
    # The message, then its fields as key=value (escaped for loguru's format); a field whose
    # value the message already spells out word for word (a "{key}" template) is left out.
    words = _words(record["message"])
    fields = " ".join(
        f"{key}={value}"
        for key, value in record["extra"].items()
        if not _words(str(value)) or not _words(str(value)) <= words
    )
    fields = fields.replace("{", "{{").replace("}", "}}")
    suffix = "\n{exception}" if record["exception"] else "\n"
    return "{time:HH:mm:ss.SSS} {level: <7} {message}" + (f" {fields}" if fields else "") + suffix


def json_line(record: Record) -> str:
    """One log record as a line of JSON (no trailing newline)."""
    body: dict[str, object] = {
        "time": record["time"].isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "msg": record["message"],
    }
    for key, value in record["extra"].items():
        body[key if key not in body else f"field.{key}"] = value
    exception = record["exception"]
    if exception is not None and exception.type is not None:
        import traceback

        body["exception"] = "".join(
            traceback.format_exception(exception.type, exception.value, exception.traceback)
        ).rstrip()
    return json.dumps(body, default=str, ensure_ascii=False)


def _json_sink(stream: TextIO) -> Callable[[Message], None]:
    def write(message: Message) -> None:
        stream.write(json_line(message.record) + "\n")
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
    now, so a test's captured stderr works) in format ``fmt`` (``text`` or ``json``)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    stream = sys.stderr if stream is None else stream
    logger.remove()
    if fmt == "json":
        logger.add(_json_sink(stream), level=level, format="{message}")
    else:
        logger.add(stream, level=level, format=text_format)


def add_logging_arguments(parser: argparse.ArgumentParser, *, top_level: bool = True) -> None:
    """Add --log-level, --log-format and -v/--v to ``parser``.

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
        "--log-format", default=default("text"), choices=FORMATS, help="text (default) or json"
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
        logger.opt(depth=1).log(level, message, **fields)
        return True

    def warning(self, message: str, /, *, key: Hashable | None = None, **fields: object) -> bool:
        return self.log("WARNING", message, key=key, **fields)

    def error(self, message: str, /, *, key: Hashable | None = None, **fields: object) -> bool:
        return self.log("ERROR", message, key=key, **fields)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
