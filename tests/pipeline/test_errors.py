"""One error family: every error the job defines carries the exit code the command line gives it, and the codes
are written in one place (pipeline/errors.py)."""

import ast
import importlib
from pathlib import Path

import pytest

from model.bundle import BundleError
from pipeline.errors import ConfigError, ExitCode, JobError, OutputError, exit_code_for, job_error_names
from pipeline.publish.lease import LeaseError, LeaseHeld, LeaseLost
from pipeline.storage import StorageError
from transforms.schema import InputError

ROOT = Path(__file__).resolve().parents[2]
# Not errors of a run: SIGTERM raised where the process was (a BaseException, like KeyboardInterrupt), argparse's
# refusal turned into a return value inside the options module, and the failpoints' two (a crash a test injects, which
# must not be handled as one of the job's errors, and a test's own mistake: an undeclared point or action).
NOT_RUN_ERRORS = {"Terminated", "_Refused", "FailpointHit", "FailpointError"}


def _exception_classes() -> list[tuple[str, str]]:
    """(module, class) of every class in pipeline/ that derives from an exception by its bases' names."""
    found = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name not in NOT_RUN_ERRORS:
                bases = {ast.unparse(b).split(".")[-1] for b in node.bases}
                if any(b.endswith(("Error", "Exception", "Held", "Lost")) or b == "Refused" for b in bases):
                    found.append((module, node.name))
    return found


def test_the_scan_finds_the_errors_it_should():
    """The twin of the next test: the scan is not empty and sees errors in every room that defines some."""
    modules = {module for module, _ in _exception_classes()}
    expected = {"pipeline.errors", "pipeline.storage", "pipeline.publish.lease", "pipeline.publish.iceberg_tables"}
    assert expected <= modules


@pytest.mark.parametrize(("module", "name"), _exception_classes())
def test_every_error_the_job_defines_is_of_the_family(module, name):
    assert issubclass(getattr(importlib.import_module(module), name), JobError)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("setting 'x'"), ExitCode.USAGE),
        (OutputError("out"), ExitCode.FAILED),
        (LeaseHeld("held"), ExitCode.LEASE_HELD),
        (LeaseLost("lost"), ExitCode.FAILED),  # a run that lost its lease mid-run failed that partition
        (LeaseError("store"), ExitCode.FAILED),
        (StorageError("disk"), ExitCode.FAILED),
        (InputError("file"), ExitCode.FAILED),  # the lower layers' errors fail the run
        (BundleError("bundle"), ExitCode.FAILED),
        (RuntimeError("a bug"), ExitCode.FAILED),
    ],
)
def test_each_error_maps_to_its_exit_code(error, code):
    assert exit_code_for(error) == code


def test_the_names_found_in_a_runners_wrapped_error_cover_the_family():
    names = job_error_names()
    assert {"ConfigError", "OutputError", "LeaseHeld", "LeaseError", "StorageError", "InputError"} <= set(names)
    assert "RuntimeError" not in names and "ValueError" not in names


def test_exit_codes_are_written_only_in_errors_py():
    """No module spells a job exit code table of its own (the input sensor's ready/waiting answers are its own)."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "pipeline").rglob("*.py")
        if "EXIT_OK" in path.read_text() or "EXIT_USAGE" in path.read_text() or "EXIT_FAILED" in path.read_text()
    ]
    assert offenders == []
