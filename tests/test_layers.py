"""Imports go one way: each module imports only from its own layer or the ones below it.

Read from the source (every import statement, at module level or inside a function), so a
lazy import cannot hide a cycle. The layers, lowest first:

- the foundation (`spritesafe.*` but the CLI): settings, decoding, pixel-art canonicalization,
  perceptual hashes, the one preprocessing; no catalog, no torch;
- the catalog, blob store, sources and ingest (`corpus`);
- what a label is: categories and the rubric, which label wins, which labels are the audit
  sample (`labelers.effective`, `labelers.rubric`, `labelers.audit`);
- training (with `spritesafe.compat`, the torchvision guard only training needs);
- export, verification and scoring the catalog with a model (`export`);
- the label stage, which the promoted model steers (the rest of `labelers`);
- review: mining, the queue, the page (`review`);
- flows, then the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("spritesafe", "corpus", "labelers", "training", "export", "review", "flows")
LAYERS = [
    ["spritesafe"],
    ["corpus"],
    ["labelers.effective", "labelers.rubric", "labelers.audit"],
    ["training", "spritesafe.compat"],
    ["export"],
    ["labelers"],
    ["review"],
    ["flows"],
    ["spritesafe.cli"],
]
FOUNDATION_MAY_NOT_IMPORT = ("torch", "timm", "onnxruntime", "sqlalchemy", "alembic", "prefect")


def layer(module: str) -> int:
    """The layer of the longest prefix naming `module`."""
    best, at = "", -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, at = prefix, index
    assert at >= 0, f"{module} is in no layer"
    return at


def imports() -> list[tuple[str, str]]:
    """(importing module, imported module) for every import of our packages."""
    found = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            module = module.removesuffix(".__init__")
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                found += [(module, name) for name in names]
    return found


def _ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES and (ROOT / name.split(".")[0]).is_dir()


def _module(name: str) -> str:
    """`pkg.mod.attr` -> `pkg.mod`: the longest prefix that is a module or package here."""
    parts = name.split(".")
    while parts:
        path = ROOT.joinpath(*parts)
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return name


def test_imports_go_one_way() -> None:
    upward = sorted(
        f"{importer} (layer {layer(importer)}) imports {target} (layer {layer(target)})"
        for importer, name in imports()
        if _ours(name)
        for target in [_module(name)]
        if layer(target) > layer(importer)
    )
    assert not upward, "\n".join(upward)


def test_the_foundation_needs_no_catalog_and_no_torch() -> None:
    heavy = sorted(
        f"{importer} imports {name}"
        for importer, name in imports()
        if layer(importer) == 0 and name.split(".")[0] in FOUNDATION_MAY_NOT_IMPORT
    )
    assert not heavy, "\n".join(heavy)


def test_the_check_sees_a_wrong_way_import() -> None:
    assert layer("spritesafe.preprocess") < layer("corpus.catalog") < layer("training.train")
    assert layer("labelers.rubric") < layer("training.snapshot") < layer("labelers.stage")
    assert layer("review.app") < layer("flows.tasks") < layer("spritesafe.cli")
    assert _module("corpus.catalog.images") == "corpus.catalog"
    assert ("spritesafe.preprocess", "spritesafe.canonical") in imports()
