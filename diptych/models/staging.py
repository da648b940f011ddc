"""Staging a model for vLLM: one transformers-style directory of symlinks into a checkpoint.

Diffusers-layout checkpoints keep a VLM in pieces (weights and config in ``text_encoder/``,
tokenizer and processor files elsewhere); vLLM wants one directory. A family plans the
staged directory (file name → link source, file name → generated text) and
:func:`publish` builds it: no weights are copied, a directory that already matches the
plan is left alone, and a changed plan (the checkpoint changed) is rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


def files_of(model_dir: Path, folders: tuple[str, ...]) -> dict[str, Path]:
    """File name → path for the files of ``folders`` under ``model_dir``; later folders win a name."""
    links: dict[str, Path] = {}
    for folder in folders:
        directory = model_dir / folder
        if directory.is_dir():
            for path in sorted(directory.iterdir()):
                if path.is_file():
                    links[path.name] = path
    return links


def publish(model_dir: Path, staging_root: Path, links: dict[str, Path], generated: dict[str, str]) -> Path:
    """The staged directory for ``model_dir`` holding exactly ``links`` and ``generated``; idempotent and safe to race."""
    # One directory per checkpoint path.
    digest = hashlib.sha256(str(model_dir).encode()).hexdigest()[:12]
    target = Path(staging_root) / f"{model_dir.name}-vlm-{digest}"
    if _matches(target, links, generated):
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for name, source in links.items():
            (scratch / name).symlink_to(source)
        for name, content in generated.items():
            (scratch / name).write_text(content)
        if target.exists():
            shutil.rmtree(target)
        try:
            # Atomic publish: a concurrent stager either sees nothing or a complete directory.
            os.rename(scratch, target)
        except OSError:
            if not _matches(target, links, generated):
                raise
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)
    logger.info("staged %s for vLLM at %s (%d links)", model_dir, target, len(links))
    return target


def _matches(target: Path, links: dict[str, Path], generated: dict[str, str]) -> bool:
    """Whether ``target`` already holds exactly the planned links and files."""
    if not target.is_dir():
        return False
    present = {path.name for path in target.iterdir()}
    if present != set(links) | set(generated):
        return False
    for name, source in links.items():
        path = target / name
        if not path.is_symlink() or Path(os.readlink(path)) != source:
            return False
    return all((target / name).read_text() == content for name, content in generated.items())
