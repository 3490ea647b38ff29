"""timm imports through the one guarded torchvision fix, and builds the student model."""

from __future__ import annotations

import json
import subprocess
import sys


def _python(code: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_guard_applies_only_when_torchvision_is_broken() -> None:
    raw = _python(
        "import json, torch\n"
        "try:\n    import torchvision\n    ok = True\n"
        "except RuntimeError as e:\n    ok = False\n"
        "print(json.dumps({'ok': ok}))"
    )
    guarded = _python(
        "import json, torch\n"
        "from spritesafe.compat import import_timm, torchvision_patched\n"
        "timm = import_timm()\n"
        "m = timm.create_model('mobilenetv4_conv_small_050', pretrained=False, num_classes=1)\n"
        "y = m(torch.zeros(2, 3, 160, 160))\n"
        "print(json.dumps({'patched': torchvision_patched(), 'shape': list(y.shape),"
        " 'params': sum(p.numel() for p in m.parameters())}))"
    )
    assert guarded["patched"] is (not raw["ok"])
    assert guarded["shape"] == [2, 1]
    assert 900_000 < int(guarded["params"]) < 1_000_000  # MobileNetV4-conv-small-050, 1 logit
