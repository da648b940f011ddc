"""The AR image stage: a family's image-token jobs on the AR engine, all images of a request at once.

Family-neutral: the adapter's :class:`~diptych.models.base.ARImageStage` says which
sequences make an image (e.g. a guidance pair) and how their tokens become codes. Every
job of a request runs concurrently (n images = n jobs inside vLLM's continuous batching);
a job whose tokens do not make an image (the stage's ``codes`` returns None, e.g. a pair
that vLLM scheduled apart) runs again, up to :data:`MAX_ATTEMPTS` times.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from diptych.engine.errors import EngineError
from diptych.models.base import ARImageJob, ARImageStage
from diptych.types import ImageRequest

if TYPE_CHECKING:
    from diptych.engine.ar_engine import AREngine

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 4


async def generate_codes(ar: AREngine, stage: ARImageStage, request: ImageRequest) -> tuple[tuple[int, ...], ...]:
    """Each image's codes, in order. Cancelling the caller aborts every sequence in vLLM."""
    jobs = stage.plan(request)
    return tuple(await asyncio.gather(*(_run(ar, stage, job, f"{request.request_id}-{i}") for i, job in enumerate(jobs))))


async def _run(ar: AREngine, stage: ARImageStage, job: ARImageJob, job_id: str) -> tuple[int, ...]:
    for attempt in range(MAX_ATTEMPTS):
        outputs = await asyncio.gather(
            *(
                ar.generate_tokens(seq.prompt_token_ids, seq.sampling, f"{job_id}-a{attempt}-s{k}")
                for k, seq in enumerate(job.sequences)
            )
        )
        codes = stage.codes(outputs[0])
        if codes is not None:
            return codes
        logger.warning("image job %s did not complete as planned (attempt %d); running it again", job_id, attempt + 1)
    raise EngineError(f"image job {job_id} failed {MAX_ATTEMPTS} times (its sequences were never scheduled together)")
