"""Known vulnerabilities in what users run: requirements-train.txt (the service's requirements.txt and
training's packages) and everything they pull in.

pip-audit prints "No known vulnerabilities found" and exits 0 even when it could audit nothing
(no advisory database reachable, every package skipped). This runs it and says how many packages
were really audited:

    python tools/dependency_audit.py    # exit 0: all audited, none vulnerable; 1: vulnerable; 2: some not audited
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements-train.txt"  # at the project root


def audit() -> list[dict[str, Any]]:
    """pip-audit's record of each package: name, version, vulns, or the reason it was skipped."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "audit.json"
        command = [sys.executable, "-m", "pip_audit", "-r", str(REQUIREMENTS), "--progress-spinner", "off",
                   "--format", "json", "--output", str(report)]  # fmt: skip
        finished = subprocess.run(command, capture_output=True, text=True)
        if not report.exists():
            print(f"NOT AUDITED: pip-audit failed (exit {finished.returncode}): {finished.stderr.strip()[-2000:]}")
            sys.exit(2)
        return list(json.loads(report.read_text())["dependencies"])


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)  # --help prints, audits nothing
    packages = audit()
    skipped = [package for package in packages if "skip_reason" in package]
    vulnerable = [package for package in packages if package.get("vulns")]
    for package in vulnerable:
        for vuln in package["vulns"]:
            fixes = ", ".join(vuln.get("fix_versions", [])) or "none yet"
            print(f"VULNERABLE {package['name']} {package['version']}: {vuln['id']} (fixed in {fixes})")
    audited = len(packages) - len(skipped)
    print(f"audited {audited} of {len(packages)} packages; {len(vulnerable)} with known vulnerabilities")
    if skipped:
        print(f"NOT AUDITED: {len(skipped)} packages, e.g. {skipped[0]['skip_reason']}")
    if vulnerable:
        return 1
    return 2 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
