"""The one place that makes `import timm` work on CPU torch with a CUDA-only torchvision.

timm imports torchvision. The only torchvision wheel built for torch 2.13 here is a CUDA
build: its compiled ops fail to load on CPU torch (silently), and then its import dies at
`torch.library.register_fake("torchvision::nms")` because that op was never defined. Nothing in
spritesafe uses torchvision's ops, so we define the two schemas it registers fakes for and
import again. The fix is applied only when that exact failure happens; a working torchvision
(a GPU machine, a future CPU wheel) is imported untouched.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

# Ops torchvision registers outside its own "ops loaded" guard (torchvision/_meta_registrations.py).
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: Any = None  # keeps the torch.library.Library alive; dropping it unregisters the ops


def torchvision_patched() -> bool:
    """True when the compatibility schemas had to be defined in this process."""
    return _library is not None


def ensure_torchvision() -> None:
    global _library
    import torch

    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or _library is not None:
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "DEF")  # type: ignore[no-untyped-call]
        for schema in _SCHEMAS:
            library.define(schema)  # type: ignore[no-untyped-call]
        _library = library
        import torchvision  # noqa: F401


def import_timm() -> ModuleType:
    """Import timm, applying the torchvision guard first. Use this instead of `import timm`."""
    ensure_torchvision()
    import timm

    return timm
