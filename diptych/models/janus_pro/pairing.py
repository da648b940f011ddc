"""A vLLM scheduler that admits the two requests of a guidance pair together.

vLLM's engine core takes requests one message at a time and may run a step between the
two halves of a pair: the first half would then be prefilled and sample alone (the CFG
processor would stop it, and the image would have to run again; with an idle engine that
happened almost every time). This scheduler holds the first half of a pair until its
partner arrives, then queues both, conditional first, back to back. vLLM's FCFS admission
then takes them in the same step unless the batch fills up exactly between them; that
case, and preemption of one half under KV-cache pressure, remain possible and are caught
by the CFG processor (``cfg.py``), which stops a split pair so that it runs again.

Installed with ``scheduler_cls`` (a documented vLLM engine argument) on top of vLLM's
``AsyncScheduler`` (the engine runs with ``async_scheduling``: the next step is scheduled
while the current one executes); runs in the engine core process.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler

from diptych.models.janus_pro.cfg import image_args


class PairingScheduler(AsyncScheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: dict[str, Any] = {}  # pair id → the half that arrived first

    def add_request(self, request: Any) -> None:
        args = image_args(request.sampling_params) if request.sampling_params is not None else None
        if args is None or args.get("role") not in ("cond", "uncond"):
            super().add_request(request)
            return
        first = self._held.pop(args["pair"], None)
        if first is None:
            self._held[args["pair"]] = request
            return
        for half in sorted((first, request), key=lambda r: image_args(r.sampling_params)["role"] != "cond"):
            super().add_request(half)

    def finish_requests(self, request_ids: str | Iterable[str] | None, finished_status: Any) -> list[Any]:
        if request_ids is None:
            self._held.clear()
        else:
            ids = {request_ids} if isinstance(request_ids, str) else set(request_ids)
            request_ids = ids
            for pair, held in list(self._held.items()):
                if held.request_id in ids:
                    del self._held[pair]
        return super().finish_requests(request_ids, finished_status)
