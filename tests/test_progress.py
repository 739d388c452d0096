"""Progress in a log: one plain line every few seconds with counts, rate and ETA; a final line at close."""

from __future__ import annotations

import io

from pipeline.progress import LogLine, progress_bar


def test_log_lines_come_every_few_seconds_with_counts_rate_and_eta():
    now = [0.0]
    out = io.StringIO()
    line = LogLine("batch", 100, "q", every=5.0, file=out, clock=lambda: now[0])
    for _ in range(40):  # 40 questions in 20 s: 2 q/s, lines at 5, 10, 15 and 20 s
        now[0] += 0.5
        line.update(1)
        line.set_postfix({"ok": 1, "failed": 0})
    line.close()
    line.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and "\r" not in out.getvalue()  # the closing line would repeat the one at 20 s
    assert lines[1] == "batch: 20/100 q (20%), 2.0 q/s, ETA 40s, ok 1, failed 0"
    assert lines[-1].startswith("batch: 40/100 q (40%)") and "ETA 30s" in lines[-1]


def test_bytes_scale_and_long_etas_read_naturally():
    now = [0.0]
    out = io.StringIO()
    line = LogLine("ingest", 50e6, "MB", scale=1e6, every=1.0, file=out, clock=lambda: now[0])
    now[0] = 10.0
    line.update(1e6)
    assert out.getvalue().strip() == "ingest: 1.0/50.0 MB (2%), 0.1 MB/s, ETA 8m10s"


def test_a_stream_that_is_not_a_terminal_gets_log_lines(capsys):
    bar = progress_bar("batch", 3, "q")  # pytest's captured stderr is not a terminal
    assert isinstance(bar, LogLine)
    bar.update(3)
    bar.close()
    logged = capsys.readouterr().err.strip()
    assert logged.startswith("batch: 3/3 q (100%), ") and logged.endswith(" q/s") and "\n" not in logged
    assert not isinstance(progress_bar("batch", 3, "q", enabled=False), LogLine)
