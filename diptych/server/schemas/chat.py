"""OpenAI chat-completions schemas (the subset a VLM server honours; the rest is refused)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from diptych.types import FinishReason


class _Strict(BaseModel):
    # Unknown fields are refused with a 400 that names them, rather than silently ignored; and
    # values must have the JSON type the schema publishes (no true for a number, no "8" for 8).
    model_config = ConfigDict(extra="forbid", strict=True)


# The names OpenAI takes for a function or a response format.
OpenAIName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class TextContent(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImageURLContent(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextContent | ImageURLContent, Field(discriminator="type")]


class FunctionCall(_Strict):
    name: str
    arguments: str = Field(description="The call's arguments: a JSON object, as text.")


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(default=None, description="An assistant's calls.")
    tool_call_id: str | None = Field(default=None, description="A tool message: the call it answers.")


class FunctionDefinition(_Strict):
    name: OpenAIName
    description: str | None = None
    parameters: dict[str, Any] | None = Field(default=None, description="The arguments' JSON Schema.")
    strict: bool | None = None


class ToolDefinition(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Strict):
    include_usage: bool = False
    # vLLM's: usage so far on every chunk, not only in a last one.
    continuous_usage_stats: bool = False


class JSONSchemaFormat(_Strict):
    name: OpenAIName
    description: str | None = None
    # "schema" would shadow a BaseModel attribute; the wire name is kept by the alias.
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StructuredOutputs(_Strict):
    """vLLM's own form of constrained decoding: exactly one constraint, and its options."""

    json_: dict[str, Any] | str | None = Field(default=None, alias="json", description="A JSON Schema.")
    regex: str | None = None
    choice: list[str] | None = Field(default=None, min_length=1)
    grammar: str | None = Field(default=None, description="An EBNF grammar.")
    json_object: bool | None = None
    structural_tag: str | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None


class ChatCompletionRequest(_Strict):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1, description="Extension: top-k truncation (-1 or 0: off).")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, description="Choices: independent completions of the prompt (at most --max-n).")
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[Annotated[str, Field(pattern=r"^[0-9]{1,9}$")], Annotated[float, Field(ge=-100.0, le=100.0)]] | None = (
        Field(default=None, max_length=300, description="Token id (as a string) → bias added to its logit."))
    logprobs: bool | None = Field(default=None, description="Each output token's log-probability.")
    top_logprobs: int | None = Field(default=None, ge=0, le=20, description="With logprobs: this many most "
                                     "likely tokens at each position.")
    response_format: ResponseFormat | None = Field(default=None, description="json_object or json_schema: "
                                                   "decoding constrained by vLLM's structured outputs.")
    tools: list[ToolDefinition] | None = Field(default=None, max_length=128, description="Functions the model "
                                               "may call (families whose template renders tools).")
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    structured_outputs: StructuredOutputs | None = Field(default=None, description="vLLM: constrained decoding "
                                                         "(json, regex, choice, grammar, json_object, structural_tag).")
    # vLLM's own sampling fields, as vLLM's OpenAI server takes them.
    ignore_eos: bool = Field(default=False, description="vLLM: decode max_tokens tokens, ignoring end of sequence.")
    min_tokens: int = Field(default=0, ge=0, description="vLLM: tokens generated before a stop can end the output.")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0, description="vLLM: minimum probability relative "
                                "to the most likely token.")
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0, description="vLLM: > 1 discourages "
                                             "tokens already in the prompt or output.")
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, max_length=64,
                                                                      description="vLLM: token ids that end the output.")
    skip_special_tokens: bool = Field(default=True, description="vLLM: leave special tokens out of the text.")
    include_stop_str_in_output: bool = Field(default=False, description="vLLM: keep the stop string in the text.")
    spaces_between_special_tokens: bool = Field(default=True, description="vLLM: a space between special tokens "
                                                "in the text.")
    allowed_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1, max_length=4096,
                                                                         description="vLLM: only these tokens.")
    bad_words: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, max_length=64,
                                                                         description="vLLM: words never generated.")
    # OpenAI's fields with no effect on a self-hosted model: accepted, ignored (docs/api.md).
    user: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    # OpenAI's output modalities: text is the only one a chat here produces.
    modalities: list[Literal["text"]] | None = Field(default=None, max_length=1)


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None  # left out of the JSON when there are none, as OpenAI does


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut]


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class DeltaFunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
