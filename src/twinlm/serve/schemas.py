"""Request and response bodies (pydantic); FastAPI publishes them at /openapi.json.

The OpenAI-compatible bodies (completions, embeddings) ignore fields they do not know, as OpenAI clients send
extras; twinlm's own bodies refuse unknown fields so a typo is an error. No field names a file or a path.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Text = Field(min_length=1, max_length=200_000)
ModelName = Field(None, description="a model given to `twinlm serve --model NAME=PATH`; default: the first that "
                                    "serves this endpoint", max_length=200)


_SURROGATE = re.compile("[\ud800-\udfff]")


class _Texts(BaseModel):
    """JSON can carry a lone UTF-16 surrogate ("\\ud800"), which Python keeps in a str but no tokenizer can encode:
    refused here as a 422 naming the field, not met later as a server error."""

    @field_validator("*")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        for text in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
            if isinstance(text, str) and _SURROGATE.search(text):
                raise ValueError("contains a lone UTF-16 surrogate such as \\ud800, which is not text; send valid "
                                 "Unicode")
        return value


class Own(_Texts):
    model_config = ConfigDict(extra="forbid")


class OpenAI(_Texts):
    model_config = ConfigDict(extra="ignore")


# ----------------------------------------------------------------------------------------------- requests


class CompletionRequest(OpenAI):
    model: str | None = ModelName
    prompt: str | list[str] = Field("", description="a prompt or a list of prompts ('' starts from BOS/EOS)")
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 is greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    stop: str | list[str] | None = Field(None, description="up to 4 stop strings")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int = Field(1, ge=1, le=1, description="only 1 is supported")
    stream: bool = False
    truncate: bool = Field(False, description="cut an over-long prompt from the left instead of refusing it")


class EmbeddingRequest(OpenAI):
    model: str | None = ModelName
    input: str | list[str] = Field(description="a text or a list of texts")
    encoding_format: Literal["float"] = "float"
    truncate: bool = False


class FillMaskRequest(Own):
    model: str | None = ModelName
    text: str = Field(min_length=1, max_length=200_000, description="text with the tokenizer's mask token, "
                                                                   "e.g. [MASK]")
    top_k: int = Field(5, ge=1, le=100)
    truncate: bool = False


class MaskPredictRequest(Own):
    model: str | None = ModelName
    prompt: str = Field("", max_length=200_000)
    max_tokens: int = Field(16, ge=1)
    steps: int = Field(10, ge=1, le=100)


class ClassifyRequest(Own):
    model: str | None = ModelName
    text: str | list[str]
    text_pair: str | list[str] | None = None
    truncate: bool = False


class AnswerRequest(Own):
    model: str | None = ModelName
    question: str = Field(min_length=1, max_length=200_000)
    context: str = Field(min_length=1, max_length=2_000_000)
    truncate: bool = False


class TagRequest(Own):
    model: str | None = ModelName
    text: str | list[str]
    truncate: bool = False


class ScoreRequest(Own):
    model: str | None = ModelName
    text: str = Field(min_length=1, max_length=2_000_000)
    paradigm: Literal["causal", "masked"] | None = Field(None, description="hybrid models: which score; default: "
                                                                           "the model's own")
    truncate: bool = False


class TokenizeRequest(Own):
    model: str | None = ModelName
    text: str = Field(max_length=200_000)
    truncate: bool = False


# ----------------------------------------------------------------------------------------------- responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: str | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float]


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class MaskCandidate(BaseModel):
    token: str
    token_id: int
    score: float
    sequence: str


class FillMaskResponse(BaseModel):
    model: str
    masks: list[list[MaskCandidate]] = Field(description="per [MASK] in text order, the top-k candidates")


class MaskPredictResponse(BaseModel):
    model: str
    text: str
    token_ids: list[int]


class ClassifyResponse(BaseModel):
    model: str
    results: list[dict] = Field(description="per text: {label, score}; multi-label {labels, scores}; regression "
                                            "{label: 'score', score}")


class AnswerResponse(BaseModel):
    model: str
    answer: str
    start: int = Field(description="character offset of the answer in the context (-1: no answer)")
    end: int
    score: float | None


class Entity(BaseModel):
    text: str
    type: str
    start: int
    end: int
    score: float


class TagResponse(BaseModel):
    model: str
    results: list[list[Entity]]


class ScoreResponse(BaseModel):
    model: str
    paradigm: str
    scores: dict[str, float | int]


class TokenizeResponse(BaseModel):
    model: str
    tokens: list[str]
    ids: list[int]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "twinlm"
    paradigms: list[str]
    task: str | None
    endpoints: list[str]
