"""Bad image-generation bodies (JSON): wrong types and names, numbers out of range, sizes, limits."""

from __future__ import annotations

from tests.server.bad_inputs.table import DROP, GENERATIONS, Case, generation, raw


def _g(id: str, request, param: str | None, code: str | None = "invalid_value", status: int = 400,  # noqa: A002
       **settings: object) -> Case:
    return Case(f"generation-{id}", request, status, param, code, dict(settings))


CASES = [
    _g("not-json", raw(GENERATIONS, b'{"prompt": "x",}'), None, "invalid_json"),
    _g("json-array", raw(GENERATIONS, b'[{"prompt": "x"}]'), None),
    # The prompt.
    _g("prompt-missing", generation(prompt=DROP), "prompt"),
    _g("prompt-empty", generation(prompt=""), "prompt"),
    _g("prompt-int", generation(prompt=42), "prompt"),
    _g("prompt-list", generation(prompt=["a", "b"]), "prompt"),
    _g("prompt-over-32000-chars", generation(prompt="x" * 32_001), "prompt"),
    _g("prompt-over-token-limit", generation(prompt="word " * 3000), "prompt", "context_length_exceeded"),
    _g("negative-prompt-over-token-limit", generation(negative_prompt="word " * 3000), "negative_prompt",
       "context_length_exceeded"),
    # Wrong field names.
    _g("field-promt", generation(promt="typo"), "promt"),
    _g("field-steps", generation(steps=20), "steps"),
    _g("field-image-on-generations", generation(image="data:image/png;base64,AAAA"), "image"),
    _g("field-input-fidelity-on-generations", generation(input_fidelity="high"), "input_fidelity"),
    # n.
    _g("n-zero", generation(n=0), "n"),
    _g("n-negative", generation(n=-1), "n"),
    _g("n-fraction", generation(n=1.5), "n"),
    _g("n-word", generation(n="two"), "n"),
    _g("n-numeric-string", generation(n="2"), "n"),
    _g("n-bool", generation(n=True), "n"),
    _g("n-over-limit", generation(n=99), "n", None),
    # size.
    _g("size-word", generation(size="big"), "size"),
    _g("size-one-number", generation(size="256"), "size"),
    _g("size-missing-height", generation(size="256x"), "size"),
    _g("size-negative", generation(size="-256x256"), "size"),
    _g("size-three-sides", generation(size="256x256x256"), "size"),
    _g("size-superscript-digit", generation(size="\u00b2x16"), "size"),
    _g("size-5000-digits", generation(size="9" * 5000 + "x16"), "size"),
    _g("size-int", generation(size=256), "size"),
    _g("size-zero", generation(size="0x0"), "size", "unsupported_size"),
    _g("size-not-multiple-of-16", generation(size="100x100"), "size", "unsupported_size"),
    _g("size-absurd", generation(size="99999x99999"), "size", "unsupported_size"),
    _g("size-over-limit", generation(size="2048x2048"), "size", "unsupported_size"),
    # Steps, guidance, seed.
    _g("steps-zero", generation(num_inference_steps=0), "num_inference_steps"),
    _g("steps-over-limit", generation(num_inference_steps=100_000), "num_inference_steps", None),
    _g("steps-word", generation(num_inference_steps="many"), "num_inference_steps"),
    _g("guidance-negative", generation(guidance_scale=-1), "guidance_scale"),
    _g("guidance-over-30", generation(guidance_scale=31), "guidance_scale"),
    _g("guidance-bool", generation(guidance_scale=False), "guidance_scale"),
    _g("guidance-nan", raw(GENERATIONS, b'{"prompt": "x", "guidance_scale": NaN}'), "guidance_scale"),
    _g("seed-negative", generation(seed=-1), "seed"),
    _g("seed-over-64-bits", generation(seed=2**64), "seed"),
    # Enumerations and flags.
    _g("response-format-url", generation(response_format="url"), "response_format"),
    _g("output-format-gif", generation(output_format="gif"), "output_format"),
    _g("output-compression-101", generation(output_compression=101), "output_compression"),
    _g("output-compression-negative", generation(output_compression=-1), "output_compression"),
    _g("partial-images-4", generation(partial_images=4), "partial_images"),
    _g("partial-images-negative", generation(partial_images=-1), "partial_images"),
    _g("background-transparent", generation(background="transparent"), "background"),
    _g("quality-ultra", generation(quality="ultra"), "quality"),
    _g("style-photo", generation(style="photo"), "style"),
    _g("stream-number", generation(stream=2), "stream"),
    # The model.
    _g("model-int", generation(model=3), "model"),
    _g("unknown-model", generation(model="dall-e-9"), "model", "model_not_found", status=404),
]
