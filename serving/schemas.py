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
CODE_PRIORITY = ("invalid_request", "invalid_labels", "invalid_text", "empty_texts", "too_many_texts",
                 "text_too_long")


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
    backend_choice: dict[str, Any]  # what BACKEND asked for, what runs, why, and its measured speed and cost
    checkpoint_id: str
    training_metrics: dict[str, Any]
    limits: dict[str, int | float]
    microbatch: dict[str, int] | None


@dataclass(frozen=True)
class Schemas:
    """The models of one app: requests carry its limits, answers its label names."""

    predict_request: type[BaseModel]
    prediction: type[BaseModel]
    predict_answer: type[BaseModel]
    explain_request: type[BaseModel]
    explanation: type[BaseModel]
    explain_answer: type[BaseModel]


class OneOfTextAndTexts(BaseModel):
    """A request with exactly one of "text" (a string) and "texts" (a list)."""

    @model_validator(mode="after")
    def _one_of_text_and_texts(self) -> "OneOfTextAndTexts":
        text = getattr(self, "text", None)
        if "text" in self.model_fields_set and text is None:
            raise PydanticCustomError("invalid_text", '"text" must be a string, got null')
        if (text is None) == (getattr(self, "texts", None) is None):
            raise PydanticCustomError("invalid_request", 'give exactly one of "text" (a string) or "texts" (a list)')
        return self


def build_schemas(labels: list[str], settings: ServingSettings) -> Schemas:
    Text = Annotated[str, StringConstraints(max_length=settings.max_chars)]  # noqa: N806 (a type)
    Label = Literal[tuple(labels)]  # type: ignore  # noqa: N806 (a type)
    label_count = len(labels)  # a field named `labels` shadows the argument inside ExplainRequest

    class PredictRequest(OneOfTextAndTexts):
        """Exactly one of "text" and "texts"."""

        model_config = ConfigDict(extra="forbid", strict=True)
        text: Text | None = None  # type: ignore
        texts: Annotated[list[Text], Field(min_length=1, max_length=settings.max_texts)] | None = None  # type: ignore
        top_k: Annotated[int, Field(ge=1, le=len(labels))] | None = Field(
            None, description="Also list the k best labels with their scores.")

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

    class ExplainRequest(OneOfTextAndTexts):
        """Exactly one of "text" and "texts"; "labels" to explain, default the predicted ones."""

        model_config = ConfigDict(extra="forbid", strict=True)
        text: Text | None = None  # type: ignore
        texts: Annotated[list[Text], Field(min_length=1, max_length=settings.max_explain_texts)] | None = None  # type: ignore
        labels: Annotated[list[Label], Field(min_length=1, max_length=label_count)] | None = Field(  # type: ignore
            None, description="Labels to explain; default: the predicted labels, or the best-scoring one when none "
                              "is predicted (multi-class: the top class).")

    class Word(BaseModel):
        model_config = ConfigDict(extra="forbid")
        word: str
        start: int = Field(ge=0, description="Offset of its first character in the text (Unicode code points).")
        end: int = Field(ge=0, description="Offset just after its last character.")

    class Explanation(BaseModel):
        model_config = ConfigDict(extra="forbid")
        labels: list[Label] = Field(description="The predicted labels.")  # type: ignore
        scores: Scores  # type: ignore
        truncated: bool = Field(description="The text was cut to the model's length; cut words have no score.")
        method: str = Field(description="How the words were scored (docs/EXPLAIN.md).")
        words: list[Word] = Field(description="The words of the text, in order.")
        attributions: dict[Label, list[float | None]] = Field(  # type: ignore
            description="Per explained label, one number per word: how much the word raises the label's log-odds "
                        "(multi-label) or log-probability (multi-class); null for a word truncation cut away.")

    class ExplainAnswer(BaseModel):
        model_config = ConfigDict(extra="forbid")
        explanations: list[Explanation]
        model: ModelSummary

    return Schemas(PredictRequest, Prediction, PredictAnswer, ExplainRequest, Explanation, ExplainAnswer)


def parse_request(model: type[BaseModel], body: Any, texts_limit: str = "MAX_TEXTS") -> tuple[list[str], BaseModel]:
    """The texts of a decoded JSON body and the validated request; an ApiError for the most basic problem found.

    `texts_limit` names the setting that bounds the number of texts, for the error message."""
    try:
        request = model.model_validate(body)
    except ValidationError as error:
        raise error_for(error, body, model, texts_limit) from None
    texts = [request.text] if request.text is not None else list(request.texts)  # type: ignore[attr-defined]
    return texts, request


def error_for(error: ValidationError, body: Any, model: type[BaseModel] | None = None,
              texts_limit: str = "MAX_TEXTS") -> ApiError:
    """The ApiError of the highest-priority problem among pydantic's errors."""
    found = [(code_of(e), e) for e in error.errors(include_url=False)]
    code, detail = min(found, key=lambda pair: CODE_PRIORITY.index(pair[0]))
    where = ".".join(map(str, detail["loc"]))
    limit = detail.get("ctx", {}).get("max_length")
    status = 413 if code in ("too_many_texts", "text_too_long") else 422
    if detail["type"] == "model_type":
        message = 'the body must be a JSON object: {"text": "..."} or {"texts": ["...", ...]}'
    elif detail["type"] == "extra_forbidden":
        fields = ", ".join(model.model_fields) if model is not None else "text, texts, top_k"
        message = f"unknown field {where!r}; expected {fields}"
    elif code == "too_many_texts":
        message = f"{len(body['texts'])} texts in one request; the limit is {limit} ({texts_limit})"
    elif code == "text_too_long":
        message = (f"{where} has {len(detail['input'])} characters; the limit is {limit} "
                   "(MAX_CHARS)")
    elif code == "invalid_labels" and detail["type"] == "literal_error":
        message = f"{where}: unknown label {detail['input']!r}; {detail['msg'].lower()}"
    else:
        message = f"{where}: {detail['msg']}" if where else detail["msg"]
    return ApiError(status, code, message)


def code_of(detail: Any) -> str:
    kind, loc = detail["type"], detail["loc"]
    if kind in CODE_PRIORITY:
        return kind
    if loc[:1] == ("labels",):
        return "invalid_labels"
    if kind == "string_too_long":
        return "text_too_long"
    if loc[:1] == ("texts",) and len(loc) == 1:
        return {"too_short": "empty_texts", "too_long": "too_many_texts"}.get(kind, "invalid_request")
    if loc[:1] in (("text",), ("texts",)) and kind in ("string_type", "string_unicode"):
        return "invalid_text"
    return "invalid_request"
