"""Log formats, verbosity, and RepeatedLog's de-duplication on an injected clock."""

from __future__ import annotations

import argparse
import io
import json
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


def test_text_lines_carry_fields_as_key_value(stream: io.StringIO) -> None:
    configure_logging(level="INFO", stream=stream)
    logger.warning("cannot bind address", address="10.96.0.1", errno=17)
    logger.warning("object {name} skipped", name="ns/web")  # the template spells it out
    logger.debug("not shown")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("WARNING cannot bind address address=10.96.0.1 errno=17")
    assert lines[1].endswith("WARNING object ns/web skipped")


def test_json_lines_parse_and_hold_fields(stream: io.StringIO) -> None:
    configure_logging(level="DEBUG", fmt="json", stream=stream)
    logger.info("sync finished", operations=3, failed=0)
    logger.debug("with braces {x}", x="{y}")
    try:
        raise ValueError("bad")
    except ValueError:
        logger.exception("crashed", msg="shadowed")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["level"] for r in records] == ["INFO", "DEBUG", "ERROR"]
    assert records[0]["msg"] == "sync finished"
    assert (records[0]["operations"], records[0]["failed"]) == (3, 0)
    assert records[1]["msg"] == "with braces {y}"
    assert records[2]["field.msg"] == "shadowed"
    assert "ValueError: bad" in records[2]["exception"]
    assert records[0]["time"][:4].isdigit() and "T" in records[0]["time"]


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
    assert "ERROR   shown" in err
    assert json.loads(err.splitlines()[-1])["msg"] == "debug shown"


def test_repeated_failure_is_logged_once_then_periodically_with_a_count(
    stream: io.StringIO,
) -> None:
    configure_logging(level="INFO", stream=stream)
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
