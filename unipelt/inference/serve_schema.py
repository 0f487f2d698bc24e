"""The server's request and response bodies as Pydantic models, so /docs and /openapi.json describe them.

The request body is read loosely (any task name, texts or lists of texts) so that a wrong request gets the
specific answer it deserves (an unknown task: 404 listing the tasks; one text for a pair task: 400 saying how
to send two), while the schema published for it is exact: one alternative per served task, with that task's
input shape and the server's limits, so a client (or a schema fuzzer) that follows it always gets a 200.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

STATUS_TEXT = {
    400: "The request is well-formed but cannot be answered (empty inputs, one text for a pair task...)",
    401: "Missing or wrong API key (servers started with --api-key)",
    404: "Unknown task (the answer lists the served tasks) or unknown path",
    405: "Method not allowed on this path",
    413: "Body over --max-body-bytes, more inputs than --max-inputs, a text over --max-text-chars, or an image of "
    "too many pixels",
    422: "A missing or mistyped field, malformed JSON, a text that cannot be encoded as UTF-8, or an image that "
    "cannot be decoded",
    429: "The request queue is full; retry after the Retry-After header's seconds",
    500: "The model failed on this request; the server keeps serving",
}


class ErrorBody(BaseModel):
    """Every error of the server's own routes."""

    error: str = Field(description="one line saying what is wrong and how to fix it")
    fields: list[str] | None = Field(None, description="the request fields that failed validation (422)")
    tasks: list[str] | None = Field(None, description="the served tasks (404 for an unknown task)")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` documenting each status with the error body."""
    return {status: {"model": ErrorBody, "description": STATUS_TEXT[status]} for status in statuses}


class PredictRequest(BaseModel):
    """Read loosely, checked in the handler; the published schema is :func:`predict_schema`'s."""

    model_config = ConfigDict(strict=True)

    task: str = Field(description="a task name from GET /v1/tasks")
    inputs: list[Any] = Field(
        description="texts; [text_a, text_b] pairs for pair tasks; sentences or lists of words for tagging; "
        "base64 images (or data:image/...;base64, URLs) for image tasks"
    )
    gates: bool = Field(False, description="also return each input's gate values per layer")

    @field_validator("inputs")
    @classmethod
    def texts(cls, inputs: list[Any]) -> list[Any]:
        for i, item in enumerate(inputs):
            if not (
                isinstance(item, str) or (isinstance(item, list) and all(isinstance(t, str) for t in item))
            ):
                raise ValueError(f"inputs[{i}] must be a text or a list of texts, not {item!r:.60}")
        return inputs


class Entity(BaseModel):
    type: str
    start: int = Field(description="index of the entity's first word")
    end: int = Field(description="index after its last word")
    text: str
    score: float = Field(description="mean probability of its words' tags")


Gates = dict[str, dict[str, float]]


class ClassPrediction(BaseModel):
    label: str
    probabilities: dict[str, float]
    truncated: bool | None = Field(None, description="the input was cut to the run's max_length")
    tokens: int | None = Field(None, description="its token count before the cut (when truncated)")
    gates: Gates | None = None


class ScorePrediction(BaseModel):
    score: float
    truncated: bool | None = None
    tokens: int | None = None
    gates: Gates | None = None


class TagPrediction(BaseModel):
    tokens: list[str] = Field(description="the sentence's words")
    tags: list[str]
    scores: list[float]
    entities: list[Entity]
    words_cut: int | None = Field(None, description="words past max_length, tagged O with score 0")
    gates: Gates | None = None


class PredictResponse(BaseModel):
    task: str
    predictions: list[ClassPrediction | ScorePrediction | TagPrediction]


class Health(BaseModel):
    status: str
    runtime: str
    tasks: int


class TaskInfo(BaseModel):
    name: str
    run: str = Field(description="the run (or export) folder")
    kind: str = Field(
        description="the run's task kind: classification, regression, token-classification, ..."
    )
    labels: list[str] | None
    inputs: str = Field(
        description="single (a text), pair (two texts), words (a sentence to tag) or image (base64)"
    )
    max_length: int
    metric: str | None
    score: float | None
    parameters: dict[str, int]


class TaskList(BaseModel):
    tasks: list[TaskInfo]


def predict_schema(items: dict[str, dict[str, Any]], max_inputs: int, gates: bool) -> dict[str, Any]:
    """The JSON schema of POST /v1/predict's body: one object per task, ``items`` giving each task's input."""
    choices = []
    for name, item in items.items():
        properties: dict[str, Any] = {
            "task": {"type": "string", "enum": [name]},
            "inputs": {"type": "array", "items": item, "minItems": 1, "maxItems": max_inputs},
        }
        if gates:
            properties["gates"] = {"type": "boolean", "default": False}
        choices.append(
            {
                "type": "object",
                "title": f"{name} request",
                "properties": properties,
                "required": ["task", "inputs"],
            }
        )
    if not choices:  # no encoder task: any task name is a 404
        return PredictRequest.model_json_schema()
    return {"oneOf": choices} if len(choices) > 1 else choices[0]
