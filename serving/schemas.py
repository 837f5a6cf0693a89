"""The API's request and answer bodies as pydantic models, built per app with its labels and limits.

Requests are validated by these models and the OpenAPI document is generated from the same models, so the
two cannot disagree. Validation problems become ApiErrors with stable codes (see `error_for`).
"""

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model, model_validator
from pydantic_core import PydanticCustomError

from serving.errors import ApiError
from serving.settings import ServingSettings

# Which problem wins when a body has several: its shape first, then its texts, then the limits.
CODE_PRIORITY = ("invalid_request", "invalid_text", "empty_texts", "too_many_texts", "text_too_long")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable error code.")
    message: str = Field(description="What went wrong, for people.")


class ErrorAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    error: ErrorDetail


class StatusAnswer(BaseModel):
    status: str
    checkpoint_id: str | None = None


class ModelSummary(BaseModel):
    """Which model answered: enough to tell two deployments apart."""

    task: Literal["multilabel", "multiclass"]
    checkpoint_id: str
    backbone: str | None
    quantized: bool
    precision: str
    backend: str


class MetadataAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")
    task: Literal["multilabel", "multiclass"]
    labels: list[str]
    thresholds: list[float] | None
    quantized: bool
    precision: str
    backend: str
    checkpoint_id: str
    training_metrics: dict[str, Any]
    limits: dict[str, int]
    microbatch: dict[str, int] | None


@dataclass(frozen=True)
class Schemas:
    """The models of one app: requests carry its limits, answers its label names."""

    predict_request: type[BaseModel]
    prediction: type[BaseModel]
    predict_answer: type[BaseModel]


def build_schemas(labels: list[str], settings: ServingSettings) -> Schemas:
    Text = Annotated[str, StringConstraints(max_length=settings.max_chars)]  # noqa: N806 (a type)
    Label = Literal[tuple(labels)]  # type: ignore  # noqa: N806 (a type)

    class PredictRequest(BaseModel):
        """Exactly one of "text" and "texts"."""

        model_config = ConfigDict(extra="forbid", strict=True)
        text: Text | None = None  # type: ignore
        texts: Annotated[list[Text], Field(min_length=1, max_length=settings.max_texts)] | None = None  # type: ignore
        top_k: Annotated[int, Field(ge=1, le=len(labels))] | None = Field(
            None, description="Also list the k best labels with their scores.")

        @model_validator(mode="after")
        def _one_of_text_and_texts(self) -> "PredictRequest":
            if "text" in self.model_fields_set and self.text is None:
                raise PydanticCustomError("invalid_text", '"text" must be a string, got null')
            if (self.text is None) == (self.texts is None):
                raise PydanticCustomError("invalid_request",
                                          'give exactly one of "text" (a string) or "texts" (a list)')
            return self

    class TopK(BaseModel):
        model_config = ConfigDict(extra="forbid")
        label: Label  # type: ignore
        score: float

    Scores = create_model("Scores", __config__=ConfigDict(extra="forbid", title="Scores"),
                          **{f"label_{i}": (float, Field(alias=name)) for i, name in enumerate(labels)})  # noqa: N806
    Scores.__doc__ = "Every label's score, in the checkpoint's label order."

    class Prediction(BaseModel):
        model_config = ConfigDict(extra="forbid")
        labels: list[Label]  # type: ignore
        scores: Scores  # type: ignore
        truncated: bool = Field(description="The text was cut to the model's length.")
        top_k: list[TopK] = Field(default_factory=list, description="Only when asked for.")

    class PredictAnswer(BaseModel):
        model_config = ConfigDict(extra="forbid")
        predictions: list[Prediction]
        model: ModelSummary

    return Schemas(PredictRequest, Prediction, PredictAnswer)


def parse_predict_request(model: type[BaseModel], body: Any) -> tuple[list[str], int | None]:
    """The texts and top_k of a decoded JSON body; an ApiError for the most basic problem found."""
    try:
        request = model.model_validate(body)
    except ValidationError as error:
        raise error_for(error, body) from None
    texts = [request.text] if request.text is not None else list(request.texts)  # type: ignore[attr-defined]
    return texts, request.top_k  # type: ignore[attr-defined]


def error_for(error: ValidationError, body: Any) -> ApiError:
    """The ApiError of the highest-priority problem among pydantic's errors."""
    found = [(code_of(e), e) for e in error.errors(include_url=False)]
    code, detail = min(found, key=lambda pair: CODE_PRIORITY.index(pair[0]))
    where = ".".join(map(str, detail["loc"]))
    limit = detail.get("ctx", {}).get("max_length")
    status = 413 if code in ("too_many_texts", "text_too_long") else 422
    if detail["type"] == "model_type":
        message = 'the body must be a JSON object: {"text": "..."} or {"texts": ["...", ...]}'
    elif detail["type"] == "extra_forbidden":
        message = f"unknown field {where!r}; expected text, texts, top_k"
    elif code == "too_many_texts":
        message = f"{len(body['texts'])} texts in one request; the limit is {limit} (MAX_TEXTS)"
    elif code == "text_too_long":
        message = (f"{where} has {len(detail['input'])} characters; the limit is {limit} "
                   "(MAX_CHARS)")
    else:
        message = f"{where}: {detail['msg']}" if where else detail["msg"]
    return ApiError(status, code, message)


def code_of(detail: Any) -> str:
    kind, loc = detail["type"], detail["loc"]
    if kind in CODE_PRIORITY:
        return kind
    if kind == "string_too_long":
        return "text_too_long"
    if loc[:1] == ("texts",) and len(loc) == 1:
        return {"too_short": "empty_texts", "too_long": "too_many_texts"}.get(kind, "invalid_request")
    if loc[:1] in (("text",), ("texts",)) and kind in ("string_type", "string_unicode"):
        return "invalid_text"
    return "invalid_request"
