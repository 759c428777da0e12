"""What the bento (and so the image) carries: the serving code, and nothing that only training needs."""

import ast
import importlib.metadata
import os
import subprocess
import sys

import pytest
import yaml

from models.config import PROJECT_DIR

BENTOFILE = yaml.safe_load((PROJECT_DIR / "bentofile.yaml").read_text())
# requirements-train.txt's packages, by import name: package name
TRAINING_ONLY = {"pandas": "pandas", "matplotlib": "matplotlib", "sklearn": "scikit-learn", "scipy": "scipy",
                 "joblib": "joblib", "onnx": "onnx"}  # fmt: skip
# Refuses the training-only packages, as in the image, where they are not installed.
BLOCK = (
    "import sys, importlib.abc\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    f"        if name.split('.')[0] in {tuple(TRAINING_ONLY)!r}: raise ImportError(f'{{name}} is not in the image')\n"
    "sys.meta_path.insert(0, Block())\n"
)


def requirement_names(file: str) -> set[str]:
    """The package names a requirements file pins itself (not those of the files it includes)."""
    lines = (line.split("#")[0].strip() for line in (PROJECT_DIR / file).read_text().splitlines())
    return {line.split("==")[0].lower() for line in lines if line and not line.startswith("-r")}


def test_serving_requirements_leave_out_training_only_packages() -> None:
    assert BENTOFILE["python"]["requirements_txt"] == "./requirements.txt"
    assert requirement_names("requirements.txt").isdisjoint(TRAINING_ONLY.values())
    assert set(TRAINING_ONLY.values()) - {"scipy"} <= requirement_names("requirements-train.txt")  # scipy: sklearn's


@pytest.fixture(scope="module")
def bento_imports(trained_model: str) -> subprocess.CompletedProcess[str]:
    """A Python that refuses the training-only packages imports every module the bento includes and
    prints the project files it loaded, one per line. service.py loads the latest model of the
    store: the test store, which trained_model fills."""
    modules = [path.removesuffix(".py").replace("/", ".") for path in BENTOFILE["include"]]
    assert "service" in modules
    script = (
        BLOCK
        + "".join(f"import {module}\n" for module in modules)
        + f"root = {str(PROJECT_DIR)!r} + '/'\n"
        + "print('\\n'.join(sorted(m.__file__[len(root):] for m in list(sys.modules.values())\n"
        + "    if (getattr(m, '__file__', None) or '').startswith(root) and '/site-packages/' not in m.__file__)))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_DIR, env=os.environ, capture_output=True, text=True, timeout=120
    )


def test_bento_modules_import_without_training_only_packages(bento_imports: subprocess.CompletedProcess[str]) -> None:
    assert bento_imports.returncode == 0, bento_imports.stderr[-3000:]


def test_import_blocker_refuses_training_only_packages() -> None:
    result = subprocess.run([sys.executable, "-c", BLOCK + "import pandas\n"], capture_output=True, text=True)
    assert result.returncode != 0 and "pandas is not in the image" in result.stderr


def test_bento_includes_every_project_module_the_service_imports(
    bento_imports: subprocess.CompletedProcess[str],
) -> None:
    assert bento_imports.returncode == 0, bento_imports.stderr[-3000:]
    imported = set(bento_imports.stdout.split())
    assert "serving/layer.py" in imported
    assert imported <= set(BENTOFILE["include"])


def test_every_package_the_bento_imports_is_pinned_in_its_requirements() -> None:
    """bentofile.yaml does not lock packages, so the image installs requirements.txt's pins and whatever
    their own requirements allow: starlette, whose internals serving/internals.py relies on, and
    typing_extensions were imported by the service but came in unpinned (BentoML asks starlette>=0.24)."""
    project = {path.split("/")[0].removesuffix(".py") for path in BENTOFILE["include"]}
    imported: set[str] = set()
    for path in BENTOFILE["include"]:
        for node in ast.walk(ast.parse((PROJECT_DIR / path).read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    # training-only packages are imported inside the functions that train (the test above runs the bento without them)
    third_party = imported - set(sys.stdlib_module_names) - project - set(TRAINING_ONLY)
    distributions = importlib.metadata.packages_distributions()
    names = {distribution.lower().replace("_", "-") for module in third_party for distribution in distributions[module]}
    assert names - {name.replace("_", "-") for name in requirement_names("requirements.txt")} == set()
