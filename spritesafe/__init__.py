"""spritesafe: grow the training set for a tiny pixel-art SFW/NSFW classifier, and ship it.

Stages live in their own packages (`corpus`, `labelers`, `training`, `export`, `review`);
`flows` composes them; this package holds what they share: settings, the CLI and the
torchvision compatibility guard.
"""

__version__ = "0.1.0"
