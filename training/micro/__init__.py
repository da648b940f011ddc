"""Trains the embedded default model, diptych-micro, on the shapes world (``diptych.bench.shapes``).

Run from the repository root: ``python -m training.micro.train --out DIR``.
"""
