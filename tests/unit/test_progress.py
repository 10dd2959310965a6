"""The progress line: plain periodic lines when stdout is not a terminal, a tqdm bar when it is;
and the console levers of rayalign.cluster (quiet by default, -v brings Ray's output back)."""

import io
import logging
import re

import pytest

from rayalign import cluster
from rayalign.progress import PROGRESS_ENV, ProgressLine, wants_live

CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # anything but newline: \r, escape codes, ...


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _plain(total, clock, every_s=10.0, **kw):
    out = io.StringIO()
    line = ProgressLine("sft", total, unit="step", stream=out, live=False, every_s=every_s, heartbeat=False,
                        clock=clock, **kw)  # fmt: skip
    return line, out


def test_plain_lines_have_counts_rate_eta_and_values_and_no_control_characters():
    clock = Clock()
    line, out = _plain(10, clock)
    for step in range(10):
        clock.now += 4.0
        line.update(1, {"loss": 2.0 / (step + 1), "tok/s": 512.0})
    line.close()
    lines = out.getvalue().splitlines()
    assert not CONTROL.search(out.getvalue())
    assert lines[0] == "[sft] step 0/10 (0%) | ? step/s | 0s elapsed, ETA ?"  # printed before the first step
    assert "[sft] step 3/10 (30%) | 4.0 s/step | 12s elapsed, ETA 28s | loss 0.6667, tok/s 512" in lines
    assert lines[-1] == "[sft] step 10/10 (100%) | 4.0 s/step | 40s elapsed, ETA 0s | loss 0.2, tok/s 512"


def test_plain_lines_come_at_most_once_per_interval_plus_the_last():
    clock = Clock()
    line, out = _plain(100, clock, every_s=10.0)
    for _ in range(100):
        clock.now += 1.0
        line.update(1)
    line.close()
    lines = out.getvalue().splitlines()
    # 100 s of updates: the first line, one per 10 s, and the last.
    assert len(lines) == 1 + 10
    assert lines[-1].startswith("[sft] step 100/100 (100%) | 1.00 step/s")
    line.close()  # twice: nothing more
    assert len(out.getvalue().splitlines()) == 11


def test_a_resumed_run_rates_only_its_own_items_and_a_slow_item_still_shows_time_passing():
    clock = Clock()
    line, out = _plain(20, clock, every_s=30.0, initial=10)
    clock.now += 10.0
    line.update(1)  # not due: nothing printed yet
    assert len(out.getvalue().splitlines()) == 1
    clock.now += 25.0
    line.tick()  # the heartbeat: due, so the elapsed time moves
    assert out.getvalue().splitlines()[-1] == "[sft] step 11/20 (55%) | 35.0 s/step | 35s elapsed, ETA 5m15s"


def test_unknown_total_shows_counts_and_rate_without_eta():
    clock = Clock()
    out = io.StringIO()
    with ProgressLine("generate", None, unit="shard", stream=out, live=False, heartbeat=False, clock=clock) as line:
        clock.now += 60.0
        line.update(1, {"kept": 3})
    assert out.getvalue().splitlines()[-1] == "[generate] shard 1 | 60.0 s/shard | 1m00s elapsed, ETA ? | kept 3"


def test_a_terminal_gets_a_tqdm_bar_and_anything_else_plain_lines(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert wants_live(FakeTTY()) and not wants_live(io.StringIO())
    monkeypatch.setenv(PROGRESS_ENV, "plain")  # what --verbose sets: worker logs would tear a bar
    assert not wants_live(FakeTTY())
    monkeypatch.delenv(PROGRESS_ENV)
    tty = FakeTTY()
    with ProgressLine("eval base", 4, unit="answer", stream=tty, heartbeat=False) as line:
        line.update(4, {"kept": 2})
    assert "\r" in tty.getvalue() and "4/4" in tty.getvalue() and "answer/s" in tty.getvalue()


def test_the_heartbeat_thread_stops_on_close():
    line = ProgressLine("x", 1, stream=io.StringIO(), live=False)
    line.close()
    line._ticker.join(timeout=5)
    assert not line._ticker.is_alive()


# ------------------------------------------------------------------ the console levers


@pytest.fixture
def restore_console(monkeypatch):
    for name in (cluster.VERBOSE_ENV, PROGRESS_ENV, "WANDB_SILENT"):
        monkeypatch.delenv(name, raising=False)
    yield
    cluster._console = None


def test_quiet_by_default_and_verbose_on_request(restore_console, tmp_path, monkeypatch):
    quiet = cluster.configure_console(tmp_path / "logs")
    assert not quiet.verbose and quiet.log_dir == tmp_path / "logs"
    assert cluster.os.environ["WANDB_SILENT"] == "true" and cluster.os.environ[cluster.VERBOSE_ENV] == "0"
    monkeypatch.setenv(cluster.VERBOSE_ENV, "1")
    loud = cluster.configure_console(tmp_path / "logs")
    assert loud.verbose and cluster.os.environ[PROGRESS_ENV] == "plain"


@pytest.fixture
def driver_loggers():
    """The loggers _quiet_driver touches, put back as they were."""
    loggers = [logging.getLogger(name) for name in (*cluster.DRIVER_LOGGERS, "py.warnings")]
    saved = [
        (lg, lg.level, lg.propagate, list(lg.handlers), {h: list(h.filters) for h in lg.handlers}) for lg in loggers
    ]
    yield
    for logger, level, propagate, handlers, filters in saved:
        logger.setLevel(level)
        logger.propagate, logger.handlers = propagate, handlers
        for handler, kept in filters.items():
            handler.filters = kept
    logging.captureWarnings(False)


def test_quiet_driver_keeps_warnings_on_the_console_and_info_in_driver_log(restore_console, driver_loggers, tmp_path):
    session = tmp_path / "session_2099-01-01_00-00-00_1"
    (session / "logs").mkdir(parents=True)
    import ray.data  # noqa: F401  (configures its loggers on import, as _quiet_driver's import does)

    consoles = {}
    for name in ("ray.data", "ray.serve"):
        logger, consoles[name] = logging.getLogger(name), io.StringIO()
        logger.handlers = [logging.StreamHandler(consoles[name])]  # the library's own console handler
        logger.setLevel(logging.INFO)
    where = cluster._quiet_driver(tmp_path / "logs", str(session))
    logging.getLogger("ray.data").info("Starting execution of Dataset")
    logging.getLogger("ray.data").warning("operator is backpressured")
    logging.getLogger("ray.data").error("dataset failed")
    logging.getLogger("ray.serve").warning("The new client HTTP config differs from the existing one")
    logging.getLogger("ray.serve").error("replica died")
    assert where == str(tmp_path / "logs")
    assert consoles["ray.data"].getvalue() == "dataset failed\n"  # its plans and backpressure: the file only
    assert consoles["ray.serve"].getvalue() == "replica died\n"  # Serve's own warnings: the file only
    driver_log = (tmp_path / "logs" / cluster.DRIVER_LOG).read_text()
    for message in ("Starting execution", "backpressured", "HTTP config differs", "replica died"):
        assert message in driver_log
    assert (tmp_path / "logs" / session.name).resolve() == (session / "logs").resolve()  # the workers' logs
