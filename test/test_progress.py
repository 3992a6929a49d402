import io
import logging

import pytest

from drac_algo.common.progress import RunProgress, eta_seconds, format_duration, progress_line


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (42.9, "42s"), (185, "3m05s"), (3720, "1h02m"), (-3, "0s"), (86399, "23h59m")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_eta_is_the_mean_pace_times_the_steps_left():
    assert eta_seconds(0, 10, 5.0) is None
    assert eta_seconds(4, 10, 20.0) == pytest.approx(30.0)
    assert eta_seconds(10, 10, 20.0) == 0.0
    assert progress_line("inference", 12, 65, "case", 130) == (
        "inference: 12/65 cases, 2m10s elapsed, ETA 9m34s"
    )
    assert progress_line("inference", 1, 1, "case", 3) == "inference: 1/1 case, 3s elapsed"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_without_a_terminal_progress_goes_to_the_log_at_a_bounded_rate(caplog):
    clock = Clock()
    stream = io.StringIO()
    caplog.set_level(logging.INFO, logger="drac_algo.common.progress")
    with RunProgress(6, "case", "inference", every_s=30, stream=stream, clock=clock) as p:
        for _ in range(6):
            clock.now += 10  # 10 s per case: a line at most every 30 s, and the last one
            p.advance()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "inference: 1/6 cases, 10s elapsed, ETA 50s",
        "inference: 4/6 cases, 40s elapsed, ETA 20s",
        "inference: 6/6 cases, 1m00s elapsed",
    ]
    assert stream.getvalue() == ""  # no bar characters where nobody reads them


def test_on_a_terminal_a_bar_instead_of_lines(caplog):
    stream = Terminal()
    caplog.set_level(logging.INFO, logger="drac_algo.common.progress")
    with RunProgress(4, "epoch", "training", stream=stream) as p:
        p.advance(3)
        assert p.bar is not None and p.bar.n == 3
        p.advance(0)  # nothing to count: no change
        p.advance()
        assert p.bar.n == 4
    assert p.bar is None and not caplog.records
    assert "training" in stream.getvalue() and "4/4" in stream.getvalue()


def test_disabled_progress_says_nothing(caplog):
    stream = Terminal()
    caplog.set_level(logging.INFO, logger="drac_algo.common.progress")
    with RunProgress(3, "epoch", "training", enabled=False, stream=stream) as p:
        p.advance(3)
    assert p.bar is None and not caplog.records and stream.getvalue() == ""
