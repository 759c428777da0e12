"""The Markdown documentation: every relative link and image resolves, the README stays a front door, and
the figures and settings the docs state are those of the code and of the result files they cite."""

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from loadtest.wrk import SOCKET_ERRORS
from models.config import PROJECT_DIR
from serving.settings import Settings

README_MAX_LINES = 160
EXTERNAL_SCHEMES = ("http://", "https://", "mailto:")

FENCED_BLOCK = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target), with an optional "title" after the target.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")

MARKDOWN_FILES = [
    "README.md",
    "CONTRIBUTING.md",
    *sorted(path.relative_to(PROJECT_DIR).as_posix() for path in (PROJECT_DIR / "docs").glob("*.md")),
]


def relative_targets(markdown: str) -> list[str]:
    """Link and image targets that name a file, without #fragment; code and external links left out."""
    prose = INLINE_CODE.sub("", FENCED_BLOCK.sub("", markdown))
    targets = []
    for target in LINK.findall(prose):
        if target.startswith(EXTERNAL_SCHEMES) or target.startswith("#"):
            continue
        targets.append(unquote(target.split("#", 1)[0]))
    return targets


def test_relative_targets_skip_external_anchors_and_code() -> None:
    markdown = (
        "[api](docs/api.md#routes) ![plot](../plot.png) [site](https://example.org) [me](mailto:a@b.c)\n"
        '[here](#call-it) `[not](a-link.md)` [titled](model.md "Model")\n'
        "```bash\necho '[not](in-code.md)'\n```\n"
    )
    assert relative_targets(markdown) == ["docs/api.md", "../plot.png", "model.md"]


@pytest.mark.parametrize("name", MARKDOWN_FILES)
def test_docs_relative_links_resolve(name: str) -> None:
    path = PROJECT_DIR / name
    if not path.exists():
        pytest.skip(f"{name} does not exist")
    broken = [target for target in relative_targets(path.read_text()) if not (path.parent / target).exists()]
    assert broken == [], f"{name} links to missing files: {broken}"


def test_docs_directory_has_pages() -> None:
    assert len(MARKDOWN_FILES) > 2, "docs/*.md found no pages: the link test would check only the README"


def test_readme_links_every_docs_page() -> None:
    linked = {Path(target).as_posix() for target in relative_targets((PROJECT_DIR / "README.md").read_text())}
    pages = {name for name in MARKDOWN_FILES if name.startswith("docs/")}
    assert pages - linked == set()


def test_readme_is_at_most_160_lines() -> None:
    lines = len((PROJECT_DIR / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details into docs/"


def table_rows(markdown: str, first_line: str) -> list[list[str]]:
    """The cells of each body row of the Markdown table that follows first_line, backticks and bold removed."""
    lines = markdown[markdown.index(first_line) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|---"))
    rows = []
    for line in lines[start + 1 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`").replace("**", "") for cell in line.strip("|").split(" | ")])
    return rows


def documented(default: Any) -> str:
    """A setting's default as the configuration table writes it: true/false, JSON lists, numbers as Python."""
    if isinstance(default, bool):
        return str(default).lower()
    return json.dumps(default) if isinstance(default, list) else str(default)


def test_configuration_table_lists_every_setting_with_its_default() -> None:
    """A setting added, renamed or given a new default in serving/settings.py shows in docs/configuration.md."""
    page = (PROJECT_DIR / "docs" / "configuration.md").read_text()
    table = {row[0]: row[1] for row in table_rows(page, "| variable | default | meaning |")}
    prefix = Settings.model_config["env_prefix"]
    settings = {f"{prefix}{name.upper()}": documented(field.default) for name, field in Settings.model_fields.items()}
    assert table == settings


README_TARGETS = {  # the README's row names of the runs in summary.json
    "this service": "service",
    "per-request baseline (Starlette)": "baseline",
    "Python ceiling (constant JSON)": "ceiling",
}


def test_readme_stress_test_figures_are_those_of_the_run_it_cites() -> None:
    """Each figure of the README's stress-test table equals the summary.json of the results folder it links."""
    readme = (PROJECT_DIR / "README.md").read_text()
    section = readme[readme.index("**Stress test**") :]
    folder = re.search(r"\(loadtest/results/([^/)]+)/report\.md\)", section.split("\n|")[0])
    assert folder, "the stress-test paragraph links no loadtest/results/<name>/report.md"
    runs = json.loads((PROJECT_DIR / "loadtest" / "results" / folder[1] / "summary.json").read_text())["runs"]
    rows = table_rows(section, "| target | requests in 45 s |")
    assert [README_TARGETS[row[0]] for row in rows] == list(runs)
    service_rate = runs["service"]["requests_per_s"]
    for row in rows:
        run = runs[README_TARGETS[row[0]]]
        latency = run["latency_ms"]
        assert row[1:] == [
            f"{run['requests']:,}",
            f"{run['requests_per_s']:,.0f}",
            *(f"{latency[p]:.1f}" for p in ("p50", "p90", "p99", "p99_9")),
            str(run["non_2xx"]),
            str(sum(run["errors"][kind] for kind in SOCKET_ERRORS)),
            f"{run['requests_per_s'] / service_rate:.2f}x",
        ], row[0]
        assert round(run["duration_s"]) == 45


def make_targets() -> list[str]:
    """The Makefile's documented targets (those `make help` lists)."""
    return re.findall(r"^([a-z-]+):[^=\n]*## ", (PROJECT_DIR / "Makefile").read_text(), re.MULTILINE)


@pytest.mark.parametrize("target", make_targets())
def test_every_make_target_that_runs_python_makes_its_environment_first(target: str) -> None:
    """`make serve` on a fresh clone ran .venv/bin/python before anything had made .venv (error 127)."""
    # -n: the commands only; -W: as if the requirements had just changed, so the install's lines show
    make = ["make", "-n", "--no-print-directory", "-W", "requirements-dev.txt", target]
    commands = subprocess.run(make, cwd=PROJECT_DIR, capture_output=True, text=True, check=True).stdout
    runs_python = [line for line in commands.splitlines() if ".venv/bin/python" in line]
    assert not runs_python or ("pip install" in runs_python[0] and "requirements-dev.txt" in runs_python[0])


def test_every_command_line_file_parses_its_arguments() -> None:
    """`--help` on a script without a parser ran it: loadtest/make_flights.py rewrote the load test's
    pool and deploy/k8s/dashboard/dashboard.py its ConfigMap."""
    scripts = []
    for folder, folders, files in os.walk(PROJECT_DIR):
        folders[:] = [name for name in folders if not name.startswith(".") and name not in ("tests", "data")]
        paths = (Path(folder, name) for name in files if name.endswith(".py"))
        scripts += [path for path in paths if 'if __name__ == "__main__":' in path.read_text()]
    assert len(scripts) > 10
    assert [path for path in scripts if "ArgumentParser(" not in path.read_text()] == []
