"""tools/dependency_audit.py: its exit code and summary say what pip-audit really audited."""

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tools import dependency_audit

# A real pip-audit 2.10.1 report, kept whole (74 packages): `python -m pip_audit -r requirements.txt
# --progress-spinner off --format json --output ...`, 2026-12-03, this machine. Its package index
# resolves every pin, but the PyPI JSON API it reaches has no per-version pages, so every package
# is skipped: the case where pip-audit itself still says "No known vulnerabilities found", exit 0.
REAL_REPORT = Path(__file__).parent / "data" / "pip_audit_requirements.json"

CLEAN = {"name": "numpy", "version": "2.4.6", "vulns": []}
SKIPPED = {"name": "bentoml", "skip_reason": "Dependency not found on PyPI and could not be audited: bentoml (1.4.40)"}
VULNERABLE = {"name": "jinja2", "version": "3.1.0", "vulns": [{"id": "GHSA-xxxx", "fix_versions": ["3.1.6"]}]}


@pytest.mark.parametrize(
    ("records", "code", "summary"),
    [
        ([CLEAN], 0, "audited 1 of 1 packages; 0 with known vulnerabilities"),
        ([CLEAN, SKIPPED], 2, "audited 1 of 2 packages; 0 with known vulnerabilities"),
        ([VULNERABLE, SKIPPED], 1, "audited 1 of 2 packages; 1 with known vulnerabilities"),
    ],
    ids=["all audited and clean", "some not audited", "vulnerable"],
)
def test_exit_code_and_summary_follow_what_was_audited(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    records: list[dict[str, Any]],
    code: int,
    summary: str,
) -> None:
    monkeypatch.setattr(dependency_audit, "audit", lambda: records)
    assert dependency_audit.main() == code
    printed = capsys.readouterr().out
    assert summary in printed
    assert ("VULNERABLE jinja2 3.1.0: GHSA-xxxx (fixed in 3.1.6)" in printed) == (code == 1)
    assert ("NOT AUDITED" in printed) == (SKIPPED in records)


def test_real_report_with_every_package_skipped_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def pip_audit(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        """pip-audit as the tool calls it, answering with the captured report."""
        assert Path(command[command.index("-r") + 1]).is_file(), "the tool audits a requirements file that is not there"
        shutil.copyfile(REAL_REPORT, command[command.index("--output") + 1])
        return subprocess.CompletedProcess(command, 0, "", "No known vulnerabilities found\n")

    monkeypatch.setattr(dependency_audit.subprocess, "run", pip_audit)
    assert dependency_audit.main() == 2
    printed = capsys.readouterr().out
    assert "audited 0 of 74 packages; 0 with known vulnerabilities" in printed
    assert "NOT AUDITED: 74 packages, e.g. Dependency not found on PyPI and could not be audited: bentoml (1.4.40)" in (
        printed
    )
