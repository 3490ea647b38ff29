"""The npm package: the INT8 model, model.json, the browser code (export/web/spritesafe.js with
the package's entry, worker and runtime loader from export/web/npm/), its TypeScript types, the
model card and a README, in one folder `npm pack` or `npm publish` takes as is.

    package.json     name, version, "type": "module", exports, types, files, sideEffects,
                     onnxruntime-web as a dependency pinned to export/web/package.json's version
    index.js         the entry: createClassifier, classify (the package's model and worker)
    index.d.ts       the types
    spritesafe.js    the shared code (preprocessing, batching, WebGPU or WASM)
    runtime.js       imports onnxruntime-web (its wasm or webgpu build) by name
    worker.js        the Web Worker
    model.int8.onnx  model.json   card.md (the model card, when the model's folder has one)
    README.md        usage (Node, bundlers) and the policy example

No copy of onnxruntime-web's files: the dependency brings them, and bundlers emit them.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from export.bundle import (
    MODEL_NAME,
    SOURCE,
    BundleError,
    check_int8,
    ort_version,
    publish,
    staging,
    web_metadata,
    write_model,
)

DEFAULT_NAME = "spritesafe-model"
TEMPLATES = SOURCE / "npm"
CODE = ("index.js", "index.d.ts", "runtime.js", "worker.js")  # from export/web/npm/
# npm's rules for a package name (scoped or not), and semver 2.0.0 for a version.
NAME = re.compile(r"^(?:@[a-z0-9-~][a-z0-9-._~]*/)?[a-z0-9-~][a-z0-9-._~]*$")
VERSION = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)


class NpmError(BundleError):
    pass


@dataclass
class NpmReport:
    path: str
    name: str
    version: str
    model_id: str | None
    onnxruntime_web: str
    files: list[str] = field(default_factory=list)
    size_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_version(model_id: str | None) -> str:
    """0.0.0-<model id>: a semver pre-release naming the model (e.g. 0.0.0-20261201-211451-a1b2)."""
    tag = re.sub(r"[^0-9A-Za-z-]+", "-", model_id or "").strip("-") or "unknown"
    if tag.isdigit() and tag != "0" and tag.startswith("0"):  # no leading zeros in a number
        tag = f"model-{tag}"
    return f"0.0.0-{tag}"


def build_npm(
    model: Path,
    out: Path,
    name: str = DEFAULT_NAME,
    version: str | None = None,
) -> NpmReport:
    """Write the package for `model` (an INT8 .onnx taking `pixels`) into `out`, replacing it."""
    if len(name) > 214 or not NAME.match(name):
        raise NpmError(f"{name!r} is not an npm package name (lowercase, URL-safe, <= 214)")
    check_int8(model)
    version = version or model_version(web_metadata(model)["model_id"])
    if not VERSION.match(version):
        raise NpmError(f"{version!r} is not a semver version (e.g. 1.2.0 or 0.0.0-20261201)")
    ort = ort_version()
    tmp = staging(out)
    meta = write_model(model, tmp)
    shutil.copy2(SOURCE / "spritesafe.js", tmp / "spritesafe.js")
    for code in CODE:
        shutil.copy2(TEMPLATES / code, tmp / code)
    card = model.parent / "card.md"
    if card.is_file():
        shutil.copy2(card, tmp / "card.md")
    readme = (TEMPLATES / "README.md").read_text()
    values = {"name": name, "version": version, "model_id": meta["model_id"], "ort_version": ort}
    for key, value in values.items():
        readme = readme.replace("{{" + key + "}}", str(value))
    (tmp / "README.md").write_text(readme)
    files = sorted(p.name for p in tmp.iterdir())
    package = {
        "name": name,
        "version": version,
        "description": (
            "spritesafe: safe / suggestive / explicit scores for pixel art "
            f"(INT8 model {meta['model_id']}, onnxruntime-web, WebGPU or WASM)"
        ),
        "keywords": ["pixel-art", "nsfw", "content-moderation", "onnx", "onnxruntime-web"],
        "type": "module",
        "main": "./index.js",
        "types": "./index.d.ts",
        "exports": {
            ".": {"types": "./index.d.ts", "default": "./index.js"},
            f"./{MODEL_NAME}": f"./{MODEL_NAME}",
            "./model.json": "./model.json",
            "./worker.js": "./worker.js",
            "./package.json": "./package.json",
        },
        "files": files,
        "sideEffects": ["./worker.js"],  # it installs the worker's message handler
        "dependencies": {"onnxruntime-web": ort},
        "engines": {"node": ">=18"},
        "spritesafe": {"model_id": meta["model_id"], "snapshot_id": meta["snapshot_id"]},
    }
    (tmp / "package.json").write_text(json.dumps(package, indent=2) + "\n")
    size = sum(p.stat().st_size for p in tmp.iterdir())
    publish(tmp, out)
    return NpmReport(str(out), name, version, meta["model_id"], ort, files, size)


__all__ = ["DEFAULT_NAME", "NpmError", "NpmReport", "build_npm", "model_version"]
