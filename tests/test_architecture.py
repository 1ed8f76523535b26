"""The package's layout: docs/architecture.md lists exactly its modules, the import rules hold,
and the role map and the permutation check exist once."""

from __future__ import annotations

import ast
import pkgutil
import re
from pathlib import Path

from cyclealign.prompts import ROLE_NAMES

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "cyclealign"
CORE = ["types", "prompts", "agreement", "sampling", "logprobs", "demonstrations", "targets"]


def package_modules() -> set[str]:
    names = {"cyclealign"}
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="cyclealign."):
        names.add(info.name)
    return names


def documented_modules() -> list[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("<!-- modules -->")[1].split("<!-- /modules -->")[0]
    return re.findall(r"^\| `(cyclealign[\w.]*)` \|", table, re.M)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_docs_list_every_module_once():
    documented = documented_modules()
    assert len(documented) == len(set(documented)), "a module is listed twice"
    assert set(documented) == package_modules()


def test_import_rules():
    for path in sources():
        name = module_name(path)
        imported = imports_of(path)

        def imports(prefix: str, imported: set[str] = imported) -> bool:
            return any(m == prefix or m.startswith(prefix + ".") for m in imported)

        if name.startswith("cyclealign.losses"):
            assert not imports("cyclealign.rankers"), f"{name} imports the rankers"
        if name.startswith("cyclealign.rankers"):
            assert not imports("cyclealign.losses"), f"{name} imports the losses"
        if not name.startswith("cyclealign.trainer") and name != "cyclealign":
            assert not imports("cyclealign.trainer"), f"{name} imports the trainer"
        if name in {f"cyclealign.{c}" for c in CORE}:
            assert not imports("cyclealign.rankers"), f"{name} (core) imports the rankers"


def string_constants(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value == "Human"]


def test_one_role_map():
    # The speaker name "Human" is written once, in prompts.ROLE_NAMES; the rest derive from it.
    holders = [module_name(p) for p in sources() if string_constants(p)]
    assert holders == ["cyclealign.prompts"]
    assert ROLE_NAMES["user"] == "Human"


def test_one_permutation_check():
    # `sorted(x) == list(range(n))` (or !=) is how a permutation check is written by hand.
    pattern = re.compile(r"sorted\([^)]*\)\s*[!=]=\s*list\(range\(")
    hand_written = [module_name(p) for p in sources() if pattern.search(p.read_text())]
    assert hand_written == []
    users = [module_name(p) for p in sources() if "check_permutation" in p.read_text()]
    assert "cyclealign.agreement" in users and len(users) > 3  # one definition, many callers
