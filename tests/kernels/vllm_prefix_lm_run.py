"""Run vLLM (CPU) on a tiny Gemma3 checkpoint and write its greedy tokens as JSON.

A script, run in a subprocess by ``test_vllm_backend.py``: vLLM spawns its engine core,
so its entry point must be guarded, and each backend gets a fresh process (and engine).

    VLLM_ENABLE_V1_MULTIPROCESSING=0 python vllm_prefix_lm_run.py MODEL_DIR OUT.json --backend diptych|stock
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The prompts of a run, in one batch (so prefills and decodes of several requests share
# steps), then prompt AGAIN once more (its image lies in a prefix-cached block by then).
# ``None`` for the image: a text-only prompt. The colours are the tiny model's probe
# images, whose answers its factory checks to depend on the image mask.
RED, BLUE = (200, 30, 30), (30, 30, 200)
PROMPTS: tuple[tuple[tuple[int, int, int] | None, str], ...] = (
    (RED, "What is in this picture?"),
    (BLUE, "What is in this picture?"),
    (BLUE, "Describe the image in detail."),
    (None, "The quick brown fox jumps over the lazy dog."),
)
AGAIN = 1
MAX_TOKENS = 12
BLOCK_SIZE = 32  # small, so that a 40-token prompt has a full block for prefix caching


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--backend", choices=["diptych", "stock"], required=True)
    args = parser.parse_args(argv)

    from diptych.compat import install

    install()
    from PIL import Image
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    requests = []
    for colour, question in PROMPTS:
        content = ([{"type": "image"}] if colour else []) + [{"type": "text", "text": question}]
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        request: dict = {"prompt": text}
        if colour:
            request["multi_modal_data"] = {"image": Image.new("RGB", (64, 64), colour)}
        requests.append(request)

    llm = LLM(
        model=str(args.model_dir),
        dtype="float32",
        enforce_eager=True,  # skips torch.compile: a faster start, and the test is about attention
        max_model_len=256,
        max_num_seqs=4,
        block_size=BLOCK_SIZE,
        enable_prefix_caching=True,
        kv_cache_memory_bytes=64 << 20,
        limit_mm_per_prompt={"image": 1},
        disable_chunked_mm_input=True,
        # One process: the worker inside the engine core (and the core in this process when
        # VLLM_ENABLE_V1_MULTIPROCESSING=0): each spawned interpreter costs ~20 s of imports.
        distributed_executor_backend="uni",
        attention_config={"backend": "CUSTOM"} if args.backend == "diptych" else None,
    )
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    batch = llm.generate(requests, params, use_tqdm=False)
    again = llm.generate([requests[AGAIN]], params, use_tqdm=False)
    result = {
        "prompt_ids": [list(out.prompt_token_ids) for out in batch],
        "outputs": [list(out.outputs[0].token_ids) for out in batch],
        "again": list(again[0].outputs[0].token_ids),
        "again_cached_tokens": again[0].num_cached_tokens,
    }
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
