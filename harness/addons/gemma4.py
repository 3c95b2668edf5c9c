"""Stable import path of the bundled Gemma 4 add-on for engines' own add-ons
(`from harness.addons.gemma4 import AddOn`); it lives in harness/architectures/gemma4/."""

from ..architectures.gemma4.addon import *  # noqa: F403
from ..architectures.gemma4.addon import AddOn, UnifiedGemma4TextModel  # noqa: F401
