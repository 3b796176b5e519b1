"""The command line and the tools around the data.

``demo``, ``convert``, ``stats``, ``show`` (:mod:`.viz`), ``evaluate`` and the synthetic scenes with ground-truth
depth it scores against (:mod:`.synthetic`).

The top layer: tools may import anything in the package; training code (datasets, transforms, losses) never
imports tools (an import-linter contract in ``pyproject.toml``).
"""
