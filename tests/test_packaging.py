"""What the packaging promises: every third-party module the code imports is declared.

Two ways in, two promises:

* ``pip install .`` (the engine and the command line) reads pyproject's dependencies: they must
  cover every third-party import of ``xportrait2_core``, including imports made inside functions.
* ComfyUI-Manager and ``comfy node install`` read only ``requirements.txt`` (and ComfyUI's own
  requirements are already installed): the two together must cover every third-party import the
  node pack can reach from ``nodes/``.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from harness import REPO_ROOT

# Import names whose distribution is named otherwise (the test venv may lack some of them).
DISTRIBUTION_OF = {"PIL": "pillow", "yaml": "pyyaml"}
FARM_MODULE = "xportrait2_core/farm.py"
KERNELS_PACKAGE = "xportrait2_core/kernels/"
COMFYUI_MODULES = {"app", "comfy", "comfy_api", "comfy_extras", "folder_paths", "latent_preview", "nodes", "server"}


def requirement_name(line: str) -> str:
    return re.split(r"[<>=!~;\[ ]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def requirement_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def pyproject() -> dict:
    import tomllib

    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def pyproject_dependencies() -> list[str]:
    return pyproject()["project"]["dependencies"]


def pyproject_optional_dependencies() -> dict[str, list[str]]:
    return pyproject()["project"]["optional-dependencies"]


def distribution_of(module: str) -> str:
    if module in DISTRIBUTION_OF:
        return DISTRIBUTION_OF[module]
    found = metadata.packages_distributions().get(module)
    return (found[0] if found else module).lower().replace("_", "-")


def _module_file(dotted: str) -> Path | None:
    """The repository file of a dotted module name (``xportrait2_core.media.images``), if any."""
    base = REPO_ROOT.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _dotted(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> tuple[set[str], set[Path]]:
    """Third-party top-level module names and repository files that ``path`` imports."""
    package = _dotted(path) if path.name == "__init__.py" else _dotted(path).rpartition(".")[0]
    outside, inside = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1] if node.level > 1 else anchor
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            targets = [(base, [alias.name for alias in node.names])]
        else:
            continue
        for name, members in targets:
            # "from pkg import module" imports a file too
            files = [f for f in [_module_file(name), *(_module_file(f"{name}.{m}") for m in members)] if f]
            if files:
                inside.update(files)
                continue
            top = name.split(".")[0]
            if top and top not in sys.stdlib_module_names and top != "__future__":
                outside.add(top)
    return outside, inside


def third_party_reachable_from(start: list[Path]) -> dict[str, set[str]]:
    """Third-party module -> the repository files importing it, over everything ``start`` reaches."""
    seen: set[Path] = set()
    todo = list(start)
    found: dict[str, set[str]] = {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        outside, inside = imports_of(path)
        for module in outside:
            found.setdefault(module, set()).add(str(path.relative_to(REPO_ROOT)))
        todo.extend(inside - seen)
    return found


def without_opt_in_extras(used: dict[str, set[str]]) -> dict[str, set[str]]:
    """``used`` less the modules that only an extra's own files import, and only lazily: a plain
    install runs without them."""
    # Ray is the `farm` extra's, imported (lazily) by farm.py alone; test_farm runs the rest without it.
    farm_extra = {requirement_name(line) for line in pyproject_optional_dependencies()["farm"]}
    used = {m: files for m, files in used.items() if not (distribution_of(m) in farm_extra and files == {FARM_MODULE})}
    # Triton is the `kernels` extra's, imported by the opt-in kernels alone (they fall back without it).
    kernels_extra = {requirement_name(line) for line in pyproject_optional_dependencies()["kernels"]}
    return {m: files for m, files in used.items()
            if not (distribution_of(m) in kernels_extra and all(f.startswith(KERNELS_PACKAGE) for f in files))}


def test_pyproject_declares_every_third_party_import_of_the_engine():
    declared = {requirement_name(line) for line in pyproject_dependencies()}
    used = without_opt_in_extras(third_party_reachable_from(sorted((REPO_ROOT / "xportrait2_core").rglob("*.py"))))
    undeclared = {m: sorted(files) for m, files in used.items() if distribution_of(m) not in declared}
    assert not undeclared, f"imported but not in pyproject's dependencies: {undeclared}"


def test_requirements_txt_agrees_with_pyproject():
    dependencies = {requirement_name(line): line.replace(" ", "") for line in pyproject_dependencies()}
    requirements = requirement_lines((REPO_ROOT / "requirements.txt").read_text())
    assert requirements, "requirements.txt lists nothing"
    for line in requirements:
        name = requirement_name(line)
        assert name in dependencies, f"{line} is in requirements.txt but not in pyproject's dependencies"
        assert line.replace(" ", "") == dependencies[name], f"requirements.txt says {line}, pyproject {dependencies[name]}"


def test_comfyui_requirements_and_ours_cover_what_the_nodes_import(comfyui_path):
    essential = essential_comfyui_requirements(comfyui_path)
    ours = requirement_lines((REPO_ROOT / "requirements.txt").read_text())
    available = {requirement_name(line) for line in essential + ours}
    used = without_opt_in_extras(
        third_party_reachable_from([REPO_ROOT / "__init__.py", *sorted((REPO_ROOT / "nodes").glob("*.py"))]))
    missing = {
        m: sorted(files) for m, files in used.items() if m not in COMFYUI_MODULES and distribution_of(m) not in available
    }
    assert not missing, f"a Manager install would lack: {missing}"
    # Ours adds only what ComfyUI does not guarantee.
    redundant = [line for line in ours if requirement_name(line) in {requirement_name(c) for c in essential}]
    assert not redundant, f"already among ComfyUI's essential requirements: {redundant}"


def essential_comfyui_requirements(comfyui_path: Path) -> list[str]:
    """ComfyUI's requirements above its "#non essential dependencies:" comment: ComfyUI runs
    without the rest, so a pack that needs one of those must ask for it itself."""
    text = (comfyui_path / "requirements.txt").read_text()
    return requirement_lines(text.partition("#non essential")[0])


def test_the_command_line_modules_depend_one_way():
    """``cli`` hands batch and ``animate --ray`` to ``farm_cli``; ``farm_cli`` never imports ``cli``."""
    core = REPO_ROOT / "xportrait2_core"
    _, farm_cli_imports = imports_of(core / "farm_cli.py")
    _, cli_imports = imports_of(core / "cli.py")
    assert core / "cli.py" not in farm_cli_imports
    assert core / "farm_cli.py" in cli_imports


def test_registry_icon_is_the_repository_file_its_url_names():
    """The registry shows ``[tool.comfy] Icon`` by URL: the raw GitHub address of this repository
    (``[project.urls] Repository``), which must name a committed PNG within the registry's 800x400."""
    from PIL import Image

    config = pyproject()
    repository = config["project"]["urls"]["Repository"].removesuffix("/")
    owner_and_name = repository.removeprefix("https://github.com/")
    assert owner_and_name != repository, f"Repository is not a GitHub address: {repository}"
    icon_url = config["tool"]["comfy"]["Icon"]
    prefix = f"https://raw.githubusercontent.com/{owner_and_name}/"
    assert icon_url.startswith(prefix), f"Icon {icon_url!r} is not a raw file of {repository}"
    _branch, _, path = icon_url.removeprefix(prefix).partition("/")
    icon_file = REPO_ROOT / path
    assert icon_file.is_file(), f"Icon names {path}, which is not in the repository"
    with Image.open(icon_file) as icon:
        assert icon.format == "PNG", icon.format
        assert icon.width <= 800 and icon.height <= 400, f"{path} is {icon.width}x{icon.height}, above 800x400"


def test_comfy_node_validate_accepts_the_pyproject():
    """What ``comfy node publish`` checks first, offline: the [tool.comfy] table, the version
    ranges (a malformed requires-comfyui is only a warning, and the registry then gets no range)
    and ruff's security rules. Any warning fails here."""
    assert importlib.util.find_spec("comfy_cli"), "comfy-cli is not installed (pip install -e .[test])"
    # Telemetry off: no prompt, and no attempt to reach the network.
    env = {**os.environ, "DO_NOT_TRACK": "1", "COMFY_NO_TELEMETRY": "1"}
    answer = subprocess.run(
        [sys.executable, "-m", "comfy_cli", "--skip-prompt", "node", "validate"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=env,
    )
    output = answer.stdout + answer.stderr
    assert answer.returncode == 0, output[-3000:]
    assert "All validation checks passed" in output, output[-3000:]
    assert not re.search(r"warning|error", output, re.IGNORECASE), output[-3000:]
