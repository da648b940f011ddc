"""The embedded default model's checkpoint, ``diptych-micro/`` (package data).

The code that trains it is in the repository's ``training/micro/``, the shapes world it learnt
from in ``diptych.bench.shapes``.
"""
