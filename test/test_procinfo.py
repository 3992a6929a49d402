"""A run's cold start is the process's age only where the process was started as the command."""

import subprocess
import sys
import time

import pytest

from drac_algo.common import procinfo


@pytest.fixture
def fresh(monkeypatch):
    """A process that has not answered command_startup_s yet."""
    monkeypatch.setattr(procinfo, "_STARTUP_TAKEN", [])


@pytest.mark.parametrize("argv0", ["/opt/app/process.py", "/opt/venv/bin/drac-process"])
def test_the_first_run_of_the_command_gets_the_process_age(fresh, monkeypatch, argv0):
    monkeypatch.setattr(sys, "argv", [argv0, "--input", "x"])
    age = procinfo.process_age_s()
    startup = procinfo.command_startup_s(("process", "drac-process"))
    assert startup is not None and age is not None and startup >= age - 0.05
    assert procinfo.command_startup_s(("process", "drac-process")) is None  # a second run


@pytest.mark.parametrize("argv0", ["/usr/bin/pytest", "-c", "", "/home/me/notebook.py"])
def test_another_program_that_calls_the_run_gets_none(fresh, monkeypatch, argv0):
    monkeypatch.setattr(sys, "argv", [argv0])
    assert procinfo.command_startup_s(("process", "drac-process")) is None


def test_the_process_age_counts_from_the_process_start():
    code = (
        "import time; time.sleep(0.5); from drac_algo.common import procinfo; "
        "print(procinfo.process_age_s())"
    )
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    elapsed = time.monotonic() - started
    assert 0.5 <= float(out.stdout) <= elapsed + 0.05
