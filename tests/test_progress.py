"""Progress output: tqdm on a terminal, a few plain lines anywhere else."""

from __future__ import annotations

import io

import pytest
from tqdm.std import tqdm

from wiseft.core import progress_bar
from wiseft.core.progress import INTERVAL_ENV, KIND_ENV, LogProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch):
    monkeypatch.delenv(KIND_ENV, raising=False)
    monkeypatch.delenv(INTERVAL_ENV, raising=False)


def lines(stream: io.StringIO) -> list[str]:
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    return text.splitlines()


def test_not_a_terminal_prints_a_few_plain_lines():
    out = io.StringIO()
    bar = progress_bar(range(1000), desc="alpha sweep (finetuned)", unit="alpha", file=out)
    assert isinstance(bar, LogProgress)
    assert list(bar) == list(range(1000))
    got = lines(out)
    assert len(got) == 5  # start, 25%, 50%, 75%, end
    assert got[0] == "alpha sweep (finetuned): 0/1000 alphas (0%), started"
    assert [g.split(": ", 1)[1].split(",")[0] for g in got[1:]] == [
        "250/1000 alphas (25%)", "500/1000 alphas (50%)", "750/1000 alphas (75%)", "1000/1000 alphas (100%)"]
    assert " s, " in got[-1] and "alphas/s" in got[-1]


def test_terminal_gets_tqdm():
    out = Terminal()
    bar = progress_bar(range(5), desc="decode", file=out)
    assert isinstance(bar, tqdm)
    assert list(bar) == list(range(5))
    assert "\r" in out.getvalue()


def test_environment_forces_a_kind(monkeypatch):
    monkeypatch.setenv(KIND_ENV, "lines")
    assert isinstance(progress_bar(total=3, file=Terminal()), LogProgress)
    monkeypatch.setenv(KIND_ENV, "tqdm")
    bar = progress_bar(total=3, file=io.StringIO())
    assert isinstance(bar, tqdm)
    bar.close()


def test_default_stream_is_stderr(capsys):
    assert list(progress_bar(iter("abc"), desc="chars")) == ["a", "b", "c"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2  # no total: no milestones, start and end only
    assert err[0] == "chars: 0 it, started" and err[1].startswith("chars: 3 it, ")


def test_milestones_with_postfix_and_rate():
    out, clock = io.StringIO(), Clock()
    bar = LogProgress(total=66, desc="fine-tune (finetuned)", unit="step", file=out, interval=30, clock=clock)
    with bar:
        for _ in range(66):
            clock.t += 1.25
            bar.update()
            bar.set_postfix(loss="0.412", samples_per_s="12.3")
    got = lines(out)
    assert [g.split(": ", 1)[1].split(" ")[0] for g in got] == ["0/66", "17/66", "33/66", "50/66", "66/66"]
    assert got[0] == "fine-tune (finetuned): 0/66 steps (0%), started"
    assert got[2] == "fine-tune (finetuned): 33/66 steps (50%), 41 s, 0.8 steps/s, loss=0.412, samples_per_s=12.3"
    assert got[-1] == "fine-tune (finetuned): 66/66 steps (100%), 1 min 22 s, 0.8 steps/s, loss=0.412, samples_per_s=12.3"


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "5")
    out, clock = io.StringIO(), Clock()
    bar = LogProgress(desc="stream", file=out, clock=clock)  # no total: time-based lines only
    for _ in range(20):
        clock.t += 1
        bar.update()
    bar.close()
    assert [g.split(": ")[1].split(",")[0] for g in lines(out)] == ["0 it", "5 it", "10 it", "15 it", "20 it", "20 it"]
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(ValueError, match=INTERVAL_ENV):
        LogProgress(file=io.StringIO())


def test_transient_bars_print_start_and_end_only():
    out = io.StringIO()
    bar = progress_bar(total=100, desc="decode bbc", leave=False, unit="input", file=out)
    for _ in range(10):
        bar.update(10)
    bar.close()
    bar.close()  # closing twice prints once
    got = lines(out)
    assert len(got) == 2 and got[1].startswith("decode bbc: 100/100 inputs (100%), ")


def test_resume_and_early_stop():
    out = io.StringIO()
    bar = progress_bar(total=10, initial=6, desc="fine-tune (e2e)", unit="step", file=out)
    bar.update(2)
    bar.close()
    got = lines(out)
    assert got[0] == "fine-tune (e2e): 6/10 steps (60%), resuming"
    # 25% and 50% were behind the resume point
    assert [g.split(": ", 1)[1].split(",")[0] for g in got] == ["6/10 steps (60%)", "8/10 steps (80%)", "8/10 steps (80%)"]
    assert got[2].endswith("stopped early") and not got[1].endswith("stopped early")


def test_disabled_prints_nothing_and_still_iterates():
    out = Terminal()
    bar = progress_bar(range(4), disable=True, file=out)
    assert list(bar) == [0, 1, 2, 3]
    bar.update()
    bar.set_postfix(loss="1.0")
    bar.close()
    assert out.getvalue() == ""


def test_iterating_a_sized_loader_uses_its_length():
    out = io.StringIO()
    batches = [[1, 2], [3]]
    assert list(progress_bar(batches, desc="features x", unit="batch", leave=False, file=out)) == batches
    assert lines(out)[-1].startswith("features x: 2/2 batches (100%), ")
