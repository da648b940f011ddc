"""The embedded default's world: a synthetic shapes world, its language, and a judge.

``world`` (scenes, rendering, splits), ``language`` (captions), ``vqa``, ``edits``,
``checks`` (what a caption claims), ``data`` (examples by split and index, for training
and evaluation) and ``analyser`` (pictures back into objects).
"""
