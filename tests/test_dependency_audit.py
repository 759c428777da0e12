"""tools/dependency_audit.py: its exit code and summary say what pip-audit really audited."""

from typing import Any

import pytest

from tools import dependency_audit

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
