"""The ComfyUI names of ``nodes/comfy_names.py`` exist in the real ComfyUI and accept the pack's calls,
and that table lists every ComfyUI name ``nodes/comfy_adapter.py`` uses.

The pack claims ``requires-comfyui = ">=0.3.64"`` with no upper bound; these tests are what makes a
ComfyUI release that moves one of those names fail here, named after it, rather than at an artist's.

ComfyUI is imported in a child process, as its server does: its folder first on ``sys.path`` (its
top-level ``nodes`` module must not meet this repository's ``nodes`` package) and ``--cpu`` set
before ``comfy.model_management`` is imported (a CUDA build of torch without a GPU stops there).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest

from harness import REPO_ROOT
from tests.test_packaging import imports_of

NAMES_FILE = REPO_ROOT / "nodes" / "comfy_names.py"
ADAPTER_FILE = REPO_ROOT / "nodes" / "comfy_adapter.py"


def load_names_module():
    # By file: importing it through the ``nodes`` package would import comfy_api with it.
    spec = importlib.util.spec_from_file_location("xp2_comfy_names", NAMES_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building the class
    spec.loader.exec_module(module)
    return module


NAMES = load_names_module()

CHILD = textwrap.dedent(
    r'''
    import ast, importlib, importlib.util, inspect, json, re, sys, textwrap
    comfyui, repo, names_file = sys.argv[1:4]
    sys.path[:] = [comfyui] + [p for p in sys.path[1:] if p not in ("", repo)]
    from comfy.cli_args import args
    args.cpu = True
    spec = importlib.util.spec_from_file_location("xp2_comfy_names", names_file)
    names = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = names
    spec.loader.exec_module(names)
    PLACEHOLDER = object()

    def class_sources(cls):
        """The parsed source of cls and of its bases that are not torch's or Python's."""
        for klass in cls.__mro__:
            if klass.__module__.split(".")[0] in ("builtins", "torch", "typing", "abc"):
                continue
            try:
                yield ast.parse(textwrap.dedent(inspect.getsource(klass)))
            except (OSError, TypeError):
                continue

    def lambda_signature(node):
        params = [inspect.Parameter(a.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD) for a in node.args.args]
        defaults = len(node.args.defaults)
        if defaults:
            params[-defaults:] = [p.replace(default=None) for p in params[-defaults:]]
        if node.args.vararg:
            params.append(inspect.Parameter(node.args.vararg.arg, inspect.Parameter.VAR_POSITIONAL))
        params += [inspect.Parameter(a.arg, inspect.Parameter.KEYWORD_ONLY, default=None) for a in node.args.kwonlyargs]
        if node.args.kwarg:
            params.append(inspect.Parameter(node.args.kwarg.arg, inspect.Parameter.VAR_KEYWORD))
        return inspect.Signature(params)

    def instance_attribute(cls, attr):
        """(found, signature of a lambda assigned to it or None): self.attr = ... or register_buffer("attr", ...)."""
        found, signature = False, None
        for tree in class_sources(cls):
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        if (isinstance(target, ast.Attribute) and target.attr == attr
                                and isinstance(target.value, ast.Name) and target.value.id == "self"):
                            found = True
                            if isinstance(node.value, ast.Lambda):
                                signature = signature or lambda_signature(node.value)
                elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "register_buffer" and node.args
                        and isinstance(node.args[0], ast.Constant) and node.args[0].value == attr):
                    found = True
        return found, signature

    def check(entry):
        try:
            obj = importlib.import_module(entry.module)
        except Exception as error:
            if entry.optional and isinstance(error, ModuleNotFoundError):
                return None  # a ComfyUI before the module: the adapter does without it
            return f"module {entry.module} does not import: {error!r}"
        parent, parts = None, entry.qualname.split(".")
        signature = None
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if last and entry.instance:
                found, signature = instance_attribute(obj, part)
                if not found:
                    return f"{obj.__qualname__} objects no longer get a {part!r} attribute"
                parent, obj = obj, None
                break
            if not hasattr(obj, part):
                if entry.optional:
                    return None
                where = getattr(obj, "__name__", repr(obj))
                return f"{where} has no {part!r} any more"
            parent, obj = obj, getattr(obj, part)
        for call in entry.calls:
            positional, keywords = names.call_arguments(call)
            if signature is None:
                try:
                    signature = inspect.signature(obj)
                except (TypeError, ValueError) as error:
                    return f"no signature to check ({call}) against: {error}"
                # A plain function looked up on a class is called on an instance: self comes first.
                member = inspect.getattr_static(parent, parts[-1]) if inspect.isclass(parent) else None
                if inspect.isfunction(member):
                    positional += 1
            try:
                signature.bind(*[PLACEHOLDER] * positional, **{k: PLACEHOLDER for k in keywords})
            except TypeError as error:
                return f"no longer accepts the call ({call}): {error}; its signature is now {signature}"
        if entry.reads:
            source = inspect.getsource(obj)
            missing = [word for word in entry.reads if not re.search(rf"\b{re.escape(word)}\b", source)]
            if missing:
                return f"no longer reads {missing} from what the pack passes"
        return None

    print("@@names " + json.dumps({entry.path: check(entry) for entry in names.COMFYUI_NAMES}))
    '''
)


@pytest.fixture(scope="module")
def comfyui_verdicts(comfyui_path) -> dict[str, str | None]:
    """Listed name -> what is wrong with it in this ComfyUI (None: nothing)."""
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(comfyui_path), str(REPO_ROOT), str(NAMES_FILE)],
        capture_output=True, text=True, timeout=300, cwd=comfyui_path,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("@@names ")]
    assert completed.returncode == 0 and lines, f"the check did not run:\n{completed.stdout[-2000:]}{completed.stderr[-3000:]}"
    return json.loads(lines[-1].removeprefix("@@names "))


@pytest.mark.parametrize("name", NAMES.COMFYUI_NAMES, ids=lambda name: name.path)
def test_comfyui_still_accepts(name, comfyui_verdicts):
    problem = comfyui_verdicts[name.path]
    assert problem is None, f"ComfyUI changed {name}: {problem} (nodes/comfy_adapter.py uses it)"


def adapter_comfyui_names(source: str) -> set[str]:
    """Every ``module:Name`` of ComfyUI outside comfy_api that the adapter's source reaches:
    ``comfy.samplers.KSampler.X`` through ``import comfy.samplers``, aliases, from-imports and
    ``getattr(module, "Name", ...)``."""
    tree = ast.parse(source)
    modules: dict[str, str] = {}  # local dotted name -> ComfyUI module
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_comfyui(alias.name):
                    if alias.asname:
                        modules[alias.asname] = alias.name
                    else:  # `import comfy.samplers` binds `comfy`, used as comfy.samplers.X
                        modules[alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and not node.level and is_comfyui(node.module or ""):
            for alias in node.names:
                # `from comfy.x import Name` is used as Name: the name itself is the dependency.
                found.add(f"{node.module}:{alias.name}")

    def dotted(node) -> str | None:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        return ".".join([node.id, *reversed(parts)])

    def resolve(chain: str) -> str | None:
        """The longest imported module prefix of chain, and the rest as the name in it."""
        pieces = chain.split(".")
        for cut in range(len(pieces) - 1, 0, -1):
            local = ".".join(pieces[:cut])
            if local in modules:
                return f"{modules[local]}:{'.'.join(pieces[cut:])}"
        return None

    inner = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            inner.add(id(node.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            chain = dotted(node)
            name = resolve(chain) if chain else None
            if name:
                found.add(name)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
            chain = dotted(node.args[0])
            if chain in modules:
                found.add(f"{modules[chain]}:{node.args[1].value}")
    return found


def is_comfyui(module: str) -> bool:
    top = module.split(".")[0]
    return top in NAMES.COMFYUI_MODULES and top != NAMES.VERSIONED_API


def test_the_names_table_lists_everything_the_adapter_uses():
    used = adapter_comfyui_names(ADAPTER_FILE.read_text())
    listed = {name.path for name in NAMES.COMFYUI_NAMES}
    assert used, "found no ComfyUI name in comfy_adapter.py: the parser is broken"
    unlisted = sorted(used - listed)
    assert not unlisted, f"comfy_adapter.py uses ComfyUI names that nodes/comfy_names.py does not list: {unlisted}"


def test_only_the_adapter_imports_comfyui_outside_comfy_api():
    files = [REPO_ROOT / "__init__.py", *sorted((REPO_ROOT / "nodes").glob("*.py")),
             *sorted((REPO_ROOT / "xportrait2_core").rglob("*.py"))]
    importing = {
        str(path.relative_to(REPO_ROOT)): sorted(modules)
        for path in files
        if path != ADAPTER_FILE and (modules := {m for m in imports_of(path)[0] if is_comfyui(m)})
    }
    assert not importing, f"ComfyUI imported outside comfy_adapter.py (list it there, and in comfy_names.py): {importing}"


def test_each_name_is_listed_once():
    # The verdicts are keyed by name: a second entry would hide the first one's calls.
    paths = [name.path for name in NAMES.COMFYUI_NAMES]
    assert len(paths) == len(set(paths)), sorted({p for p in paths if paths.count(p) > 1})
