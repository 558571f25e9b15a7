"""Log formats, verbosity, and RepeatedLog's de-duplication on an injected clock."""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import re
import time
from collections.abc import Iterator

import pytest
from loguru import logger

from ipvsproxy.logs import (
    RepeatedLog,
    add_logging_arguments,
    configure_logging,
    level_for_verbosity,
    logging_from_arguments,
)


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    yield out
    logger.remove()
    logger.add(io.StringIO())  # leave no handler pointing at a closed stream


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_console_lines_carry_fields_as_key_value(stream: io.StringIO) -> None:
    configure_logging(level="INFO", fmt="console", stream=stream)
    logger.warning("cannot bind address", address="10.96.0.1", errno=17)
    logger.warning("object {name} skipped", name="ns/web")  # the template spells it out
    logger.debug("not shown")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("WARNING cannot bind address address=10.96.0.1 errno=17")
    assert lines[1].endswith("WARNING object ns/web skipped")


# klog's text header, as log pipelines built for kube-proxy match it (fluent-bit's "k8s
# klog" style parsers): severity, mmdd, time to the microsecond, PID right-aligned in 7
# columns, file:line, "] ", then a quoted message and key=value pairs.
KLOG_HEADER = re.compile(
    r"^(?P<severity>[IWEF])(?P<month>\d\d)(?P<day>\d\d) "
    r"(?P<time>\d\d:\d\d:\d\d\.\d{6}) +(?P<pid>\d+) (?P<file>[^ :]+):(?P<line>\d+)\] "
    r"(?P<rest>.*)$"
)
KLOG_PAIR = re.compile(r' (?P<key>[A-Za-z_][\w.-]*)=(?P<value>"(?:[^"\\]|\\.)*"|[^ "]+)')


def parse_klog(line: str) -> dict[str, object]:
    """A klog text line: its header fields, message and key/value pairs (values decoded:
    quoted strings unquoted, the rest read as JSON)."""
    header = KLOG_HEADER.match(line)
    assert header is not None, line
    rest = header["rest"]
    message, end = json.JSONDecoder().raw_decode(rest)
    pairs: dict[str, object] = {}
    tail = rest[end:]
    position = 0
    while position < len(tail):
        pair = KLOG_PAIR.match(tail, position)
        assert pair is not None, (line, tail[position:])
        pairs[pair["key"]] = json.loads(pair["value"])
        position = pair.end()
    return {**header.groupdict(), "msg": message, "pairs": pairs}


def test_text_is_klogs_and_parses_as_klog(stream: io.StringIO) -> None:
    configure_logging(level="DEBUG", stream=stream)
    logger.info("sync finished", operations=3, backend="nft", ok=True)
    logger.warning("cannot bind address", address="10.96.0.1", errno=17)
    logger.error('quote " and space', error="exit status 2")
    logger.debug("object {name} skipped", name="ns/web")  # the template spells it out
    RepeatedLog().error("through RepeatedLog")  # names this file's line, not logs.py's
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5
    assert parse_klog(lines.pop())["file"] == "test_logs.py"
    parsed = [parse_klog(line) for line in lines]
    assert [p["severity"] for p in parsed] == ["I", "W", "E", "I"]
    assert parsed[0]["msg"] == "sync finished"
    assert parsed[0]["pairs"] == {"operations": 3, "backend": "nft", "ok": True}
    assert parsed[1]["pairs"] == {"address": "10.96.0.1", "errno": 17}
    assert parsed[2]["msg"] == 'quote " and space'
    assert parsed[2]["pairs"] == {"error": "exit status 2"}
    assert parsed[3]["msg"] == "object ns/web skipped" and parsed[3]["pairs"] == {}
    assert {p["file"] for p in parsed} == {"test_logs.py"}
    assert {p["pid"] for p in parsed} == {str(os.getpid())}
    now = datetime.datetime.now()
    assert (parsed[0]["month"], parsed[0]["day"]) == (f"{now:%m}", f"{now:%d}")
    # the PID takes 7 columns, right-aligned, as klog pads it
    assert lines[0][22:29] == f"{os.getpid():7d}"


def test_text_multi_line_values_are_klogs_block(stream: io.StringIO) -> None:
    configure_logging(level="INFO", stream=stream)
    logger.error("restore failed", rules="*nat\nCOMMIT\n")
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith('"restore failed" rules=<')
    assert lines[1:] == ["\t*nat", "\tCOMMIT", " >"]


def test_json_is_klogs(stream: io.StringIO) -> None:
    configure_logging(level="DEBUG", fmt="json", stream=stream)
    before = time.time() * 1000
    logger.info("sync finished", operations=3, failed=0)
    logger.debug("with braces {x}", x="{y}")
    logger.error("cannot restore", error="exit status 2", family="IPv4")
    try:
        raise ValueError("bad")
    except ValueError:
        logger.exception("crashed", msg="shadowed")
    after = time.time() * 1000
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    for record in records:
        assert list(record)[:3] == ["ts", "caller", "msg"]
        assert before <= record["ts"] <= after  # milliseconds since the epoch, as klog's
        assert re.fullmatch(r"tests/test_logs\.py:\d+", record["caller"])
        assert "level" not in record
    assert [r.get("v") for r in records] == [0, 4, None, None]
    assert (records[0]["operations"], records[0]["failed"]) == (3, 0)
    assert records[1]["msg"] == "with braces {y}"
    # an error: no v, its error as err and last
    assert list(records[2]) == ["ts", "caller", "msg", "family", "err"]
    assert records[2]["err"] == "exit status 2"
    assert records[3]["field.msg"] == "shadowed"
    assert "ValueError: bad" in records[3]["err"]


@pytest.mark.parametrize(("v", "level"), [(0, "INFO"), (2, "INFO"), (4, "DEBUG"), (9, "TRACE")])
def test_verbosity_follows_klog(v: int, level: str) -> None:
    assert level_for_verbosity(v) == level


def test_options_work_before_and_after_the_subcommand(stream: io.StringIO) -> None:
    parser = argparse.ArgumentParser()
    add_logging_arguments(parser)
    sub = parser.add_subparsers(dest="command").add_parser("run")
    add_logging_arguments(sub, top_level=False)
    args = parser.parse_args(["--log-format", "json", "run", "--v=4"])
    assert (args.log_format, args.verbosity, args.log_level) == ("json", 4, None)
    args = parser.parse_args(["-v", "2", "run"])
    assert (args.log_format, args.verbosity) == ("text", 2)
    args = parser.parse_args(["run", "--log-level", "warning"])
    assert args.log_level == "WARNING"
    with pytest.raises(ValueError, match="log format"):
        configure_logging(fmt="xml")


def test_logging_from_arguments_prefers_log_level(
    stream: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    logging_from_arguments(argparse.Namespace(log_level="ERROR", verbosity=9, log_format="text"))
    logger.warning("hidden")
    logger.error("shown")
    logging_from_arguments(argparse.Namespace(log_level=None, verbosity=4, log_format="json"))
    logger.debug("debug shown")
    logger.trace("trace hidden")
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert '] "shown"' in err and err.startswith("E")
    assert json.loads(err.splitlines()[-1])["msg"] == "debug shown"


def test_repeated_failure_is_logged_once_then_periodically_with_a_count(
    stream: io.StringIO,
) -> None:
    configure_logging(level="INFO", fmt="console", stream=stream)
    clock = Clock()
    repeats = RepeatedLog(interval=60, clock=clock)
    assert repeats.error("sync failed", reason="EPERM")
    for _ in range(9):  # every second for nine seconds
        clock.now += 1
        assert not repeats.error("sync failed", reason="EPERM")
    assert repeats.error("sync failed", reason="ENOENT")  # another reason is another message
    clock.now += 60
    assert repeats.error("sync failed", reason="EPERM")
    clock.now += 1
    assert not repeats.error("sync failed", reason="EPERM")
    repeats.clear()  # the loop recovered: the next failure is news again
    assert repeats.error("sync failed", reason="EPERM")
    lines = stream.getvalue().splitlines()
    assert [line.split("ERROR   ", 1)[1] for line in lines] == [
        "sync failed reason=EPERM",
        "sync failed reason=ENOENT",
        "sync failed reason=EPERM repeated=10",
        "sync failed reason=EPERM",
    ]


def test_explicit_key_groups_messages_whose_fields_vary(stream: io.StringIO) -> None:
    configure_logging(level="INFO", stream=stream)
    repeats = RepeatedLog(interval=60, clock=Clock(), max_keys=2)
    assert repeats.warning("slow sync", key="slow", seconds=1.5)
    assert not repeats.warning("slow sync", key="slow", seconds=2.5)
    assert repeats.warning("a")
    assert repeats.warning("b")  # evicts "slow", the least recently seen
    assert repeats.warning("slow sync", key="slow", seconds=3.5)
    assert stream.getvalue().count("slow sync") == 2
