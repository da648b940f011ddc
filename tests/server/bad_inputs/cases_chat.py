"""Bad chat-completion bodies (JSON): broken JSON, wrong types and names, numbers out of range, limits."""

from __future__ import annotations

from tests.server.bad_inputs import images
from tests.server.bad_inputs.table import (
    CHAT,
    DROP,
    Case,
    chat,
    data_url,
    image_part,
    raw,
    text_part,
    user_message,
)

J = "application/json"
IMG = data_url(images.png())


def _c(id: str, request, param: str | None, code: str | None = "invalid_value", status: int = 400,  # noqa: A002
       **settings: object) -> Case:
    return Case(f"chat-{id}", request, status, param, code, dict(settings))


CASES = [
    # The body is not a JSON object.
    _c("not-json", raw(CHAT, b"{not json"), None, "invalid_json"),
    _c("truncated-json", raw(CHAT, b'{"model": "tiny", "messages": ['), None, "invalid_json"),
    _c("empty-body", raw(CHAT, b""), None, "invalid_json"),
    _c("json-null", raw(CHAT, b"null"), None, "invalid_json"),
    _c("json-array", raw(CHAT, b"[]"), None),
    _c("json-string", raw(CHAT, b'"hello"'), None),
    _c("invalid-utf8", raw(CHAT, b'{"model": "tiny", "messages": "\xff\xfe"}'), None, "invalid_request"),
    _c("nested-too-deep", raw(CHAT, b"[" * 100_000 + b"]" * 100_000), None, "invalid_request"),
    _c("integer-of-5000-digits", raw(CHAT, b'{"model": "tiny", "max_tokens": ' + b"9" * 5000 + b"}"), None,
       "invalid_request"),
    _c("form-encoded", raw(CHAT, b"model=tiny", "application/x-www-form-urlencoded"), None),
    _c("no-content-type", raw(CHAT, b'{"model": "tiny"}', None), None),
    # Required fields missing, wrong names, unknown fields.
    _c("missing-model", chat(model=DROP), "model"),
    _c("missing-messages", chat(messages=DROP), "messages"),
    _c("field-message-for-messages", chat(messages=DROP, message=[user_message(text_part("hi"))]), "messages"),
    _c("field-max-token", chat(max_token=8), "max_token"),
    _c("field-functions", chat(functions=[{"name": "f"}]), "functions"),
    _c("field-image-url-at-top", chat(image_url=IMG), "image_url"),
    # Wrong types.
    _c("model-int", chat(model=7), "model"),
    _c("messages-string", chat(messages="hi"), "messages"),
    _c("messages-object", chat(messages={"role": "user", "content": "hi"}), "messages"),
    _c("message-not-object", chat(messages=["hi"]), "messages.0"),
    _c("role-missing", chat(messages=[{"content": "hi"}]), "messages.0.role"),
    _c("role-unknown", chat(messages=[{"role": "robot", "content": "hi"}]), "messages.0.role"),
    _c("content-int", chat(messages=[{"role": "user", "content": 5}]), "messages.0.content"),
    _c("part-type-unknown", chat(messages=[user_message({"type": "audio", "audio": "x"})]),
       "messages.0.content.0"),
    _c("text-part-without-text", chat(messages=[user_message({"type": "text"})]), "messages.0.content.0.text"),
    _c("image-part-url-as-string", chat(messages=[user_message({"type": "image_url", "image_url": IMG})]),
       "messages.0.content.0.image_url"),
    _c("image-url-empty", chat(messages=[user_message(image_part(""))]), "messages.0.content.0.image_url.url"),
    _c("image-detail-unknown", chat(messages=[user_message(
        {"type": "image_url", "image_url": {"url": IMG, "detail": "ultra"}})]), "messages.0.content.0.image_url.detail"),
    _c("temperature-string", chat(temperature="hot"), "temperature"),
    _c("max-tokens-fraction", chat(max_tokens=8.5), "max_tokens"),
    _c("max-tokens-word", chat(max_tokens="eight"), "max_tokens"),
    _c("stream-number", chat(stream=2), "stream"),
    _c("stream-string", chat(stream="true"), "stream"),
    _c("temperature-bool", chat(temperature=True), "temperature"),
    _c("max-tokens-numeric-string", chat(max_tokens="8"), "max_tokens"),
    _c("stop-number", chat(stop=5), "stop"),
    _c("stream-options-unknown-field", chat(stream=True, stream_options={"usage": True}), "stream_options.usage"),
    # Numbers out of range.
    _c("temperature-above-2", chat(temperature=5), "temperature"),
    _c("temperature-negative", chat(temperature=-1), "temperature"),
    _c("temperature-nan", raw(CHAT, b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], '
                              b'"temperature": NaN}'), "temperature"),
    _c("max-tokens-infinity", raw(CHAT, b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], '
                                  b'"max_tokens": Infinity}'), "max_tokens"),
    _c("top-p-zero", chat(top_p=0), "top_p"),
    _c("top-p-above-1", chat(top_p=1.5), "top_p"),
    _c("top-k-below-minus-1", chat(top_k=-2), "top_k"),
    _c("max-tokens-zero", chat(max_tokens=0), "max_tokens"),
    _c("max-tokens-negative", chat(max_tokens=-5), "max_tokens"),
    _c("max-completion-tokens-zero", chat(max_completion_tokens=0), "max_completion_tokens"),
    _c("seed-negative", chat(seed=-1), "seed"),
    _c("seed-over-64-bits", chat(seed=2**64), "seed"),
    _c("n-zero", chat(n=0), "n"),
    _c("n-string", chat(n="2"), "n"),
    _c("n-fraction", chat(n=1.5), "n"),
    _c("presence-penalty-3", chat(presence_penalty=3), "presence_penalty"),
    _c("frequency-penalty-minus-3", chat(frequency_penalty=-3), "frequency_penalty"),
    _c("logprobs-string", chat(logprobs="yes"), "logprobs"),
    _c("top-logprobs-21", chat(logprobs=True, top_logprobs=21), "top_logprobs"),
    _c("top-logprobs-negative", chat(logprobs=True, top_logprobs=-1), "top_logprobs"),
    # vLLM's sampling fields and OpenAI's logit_bias: types and ranges.
    _c("ignore-eos-string", chat(ignore_eos="yes"), "ignore_eos"),
    _c("min-tokens-negative", chat(min_tokens=-1), "min_tokens"),
    _c("min-tokens-float", chat(min_tokens=1.5), "min_tokens"),
    _c("min-p-above-1", chat(min_p=1.5), "min_p"),
    _c("repetition-penalty-zero", chat(repetition_penalty=0), "repetition_penalty"),
    _c("repetition-penalty-string", chat(repetition_penalty="high"), "repetition_penalty"),
    _c("stop-token-ids-negative", chat(stop_token_ids=[-1]), "stop_token_ids.0"),
    _c("stop-token-ids-string", chat(stop_token_ids="7"), "stop_token_ids"),
    _c("stop-token-ids-65", chat(stop_token_ids=list(range(65))), "stop_token_ids"),
    _c("logit-bias-key-not-a-token", chat(logit_bias={"abc": 1}), "logit_bias.abc"),
    _c("logit-bias-above-100", chat(logit_bias={"5": 101}), "logit_bias.5"),
    _c("logit-bias-list", chat(logit_bias=[5, 1]), "logit_bias"),
    _c("skip-special-tokens-int", chat(skip_special_tokens=1), "skip_special_tokens"),
    _c("metadata-not-strings", chat(metadata={"a": 1}), "metadata.a"),
    _c("service-tier-unknown", chat(service_tier="gold"), "service_tier"),
    _c("modalities-audio", chat(modalities=["audio"]), "modalities.0"),
    _c("structured-outputs-unknown-field", chat(structured_outputs={"guided_choice": ["a"]}),
       "structured_outputs.guided_choice"),
    _c("structured-outputs-choice-empty", chat(structured_outputs={"choice": []}), "structured_outputs.choice"),
    _c("allowed-token-ids-negative", chat(allowed_token_ids=[-3]), "allowed_token_ids.0"),
    _c("allowed-token-ids-empty", chat(allowed_token_ids=[]), "allowed_token_ids"),
    _c("bad-words-empty-word", chat(bad_words=[""]), "bad_words.0"),
    _c("structured-outputs-two-constraints", chat(structured_outputs={"regex": "a+", "choice": ["a"]}),
       "structured_outputs", None),
    _c("structured-outputs-no-constraint", chat(structured_outputs={"disable_any_whitespace": True}),
       "structured_outputs", None),
    # Tools: shapes and names.
    _c("tool-type-unknown", chat(tools=[{"type": "retrieval", "function": {"name": "f"}}]), "tools.0.type"),
    _c("tool-name-with-spaces", chat(tools=[{"type": "function", "function": {"name": "get weather"}}]),
       "tools.0.function.name"),
    _c("tool-parameters-list", chat(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]),
       "tools.0.function.parameters"),
    _c("tool-choice-unknown", chat(tool_choice="sometimes"), "tool_choice"),
    _c("parallel-tool-calls-string", chat(parallel_tool_calls="no"), "parallel_tool_calls"),
    _c("tool-call-arguments-object", chat(messages=[user_message(text_part("hi")), {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]},
        {"role": "tool", "tool_call_id": "c", "content": "1"}]), "messages.1.tool_calls.0.function.arguments"),
    # Tools: well-formed, but not servable as asked.
    _c("tool-choice-without-tools", chat(tool_choice="required"), "tool_choice", None),
    _c("tool-choice-names-no-tool", chat(tools=[{"type": "function", "function": {"name": "f"}}],
                                         tool_choice={"type": "function", "function": {"name": "g"}}),
       "tool_choice.function.name", None),
    _c("tool-message-without-call-id", chat(messages=[user_message(text_part("hi")),
                                                      {"role": "tool", "content": "1"}]), "messages.1.tool_call_id", None),
    _c("tool-calls-on-a-user-message", chat(messages=[{"role": "user", "content": "hi", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]), "messages.0.tool_calls", None),
    _c("tool-call-arguments-not-json", chat(messages=[user_message(text_part("hi")), {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "x="}}]},
        {"role": "tool", "tool_call_id": "c", "content": "1"}]), "messages.1.tool_calls.0.function.arguments", None),
    _c("tools-on-a-family-without-tool-calling", chat(tools=[{"type": "function", "function": {"name": "f"}}]),
       "tools", "capability_not_supported"),
    _c("tool-result-on-a-family-without-tool-calling", chat(messages=[user_message(text_part("hi")), {
        "role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "1"}]), "messages", "capability_not_supported"),
    # Well-formed, but not servable as asked.
    _c("messages-empty", chat(messages=[]), "messages"),
    _c("stop-five-sequences", chat(stop=["a", "b", "c", "d", "e"]), "stop", None),
    _c("min-tokens-over-max-tokens", chat(min_tokens=9, max_tokens=4), "min_tokens", None),
    _c("top-logprobs-without-logprobs", chat(top_logprobs=2), "top_logprobs", None),
    _c("last-message-assistant", chat(messages=[user_message(text_part("hi")),
                                                {"role": "assistant", "content": "hello"}]), "messages", None),
    _c("image-in-assistant-message", chat(messages=[{"role": "assistant", "content": [image_part(IMG)]},
                                                    user_message(text_part("hi"))]), "messages.0.content.0", None),
    _c("image-in-system-message", chat(messages=[{"role": "system", "content": [image_part(IMG)]},
                                                 user_message(text_part("hi"))]), "messages.0.content.0", None),
    _c("too-many-images", chat(messages=[user_message(*[image_part(IMG)] * 3, text_part("hi"))]), "messages",
       None, max_images_per_request=2),
    _c("max-tokens-over-limit", chat(max_tokens=100_000), "max_tokens", None),
    _c("n-over-limit", chat(n=3), "n", None, max_n=2),
    _c("n-over-queue-depth", chat(n=3), "n", None, queue_depth=2),  # could never be admitted
    _c("prompt-over-token-limit", chat(messages=[user_message(text_part("word " * 3000))]), "messages",
       "context_length_exceeded"),
    _c("image-tokens-over-limit", chat(messages=[user_message(image_part(data_url(images.png((2048, 2048)))),
                                                              text_part("hi"))]), "messages",
       "context_length_exceeded"),
    _c("unknown-model", chat(model="gpt-9"), "model", "model_not_found", status=404),
    _c("body-over-limit", chat(user="x" * 5000), None, "body_too_large", status=413, max_body_bytes=4096),
]
