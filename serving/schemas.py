"""The API's request and answer bodies as pydantic models, declared once for every app.

An app's labels and limits reach validation as the validation context (`Limits`), and reach the OpenAPI document
through FILL marks in the generated JSON schema (serving/openapi.py fills them), so the checks and the document
cannot disagree. Validation problems become ApiErrors with stable codes (see `error_for`).
"""

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    RootModel,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError, PydanticKnownError

from serving.errors import ApiError
from serving.settings import ServingSettings

# Which problem wins when a body has several: its shape first, then its texts, then the limits.
CODE_PRIORITY = ("invalid_request", "invalid_labels", "invalid_text", "empty_texts", "too_many_texts",
                 "text_too_long")
# In a generated JSON schema: {keyword: name}, where the app's value of that name goes (a setting, `labels`,
# `label_count` or `scores`; serving/openapi.py's `document_values`).
FILL = "x-fill"


@dataclass(frozen=True)
class Limits:
    """What one app checks requests against, passed as pydantic's validation context; named as the settings."""

    labels: tuple[str, ...]
    max_texts: int
    max_explain_texts: int
    max_chars: int

    @classmethod
    def of(cls, labels: list[str], settings: ServingSettings) -> Self:
        return cls(tuple(labels), settings.max_texts, settings.max_explain_texts, settings.max_chars)


def fill(**marks: str) -> JsonDict:
    """Marks for the document: each JSON schema keyword gets the app's value of that name."""
    return {FILL: {keyword: name for keyword, name in marks.items()}}


def limits_of(info: ValidationInfo) -> Limits:
    if not isinstance(info.context, Limits):
        raise TypeError("validate requests with context=Limits.of(labels, settings): the limits are the app's")
    return info.context


def within_max_chars(text: str, info: ValidationInfo) -> str:
    """Valid Unicode (lone surrogates refused first, as pydantic's constrained str does) of at most MAX_CHARS."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise PydanticKnownError("string_unicode") from None
    limit = limits_of(info).max_chars
    if len(text) > limit:
        raise PydanticCustomError("text_too_long", "over {max_length} characters", {"max_length": limit})
    return text


def texts_within(limit: str) -> BeforeValidator:
    """Refuses a list of more texts than the app's `limit` (a field of Limits), before any text is checked."""
    def check(texts: Any, info: ValidationInfo) -> Any:
        most = getattr(limits_of(info), limit)
        if isinstance(texts, list) and len(texts) > most:
            raise PydanticCustomError("too_many_texts", "{count} texts in one request; the limit is {max_length} "
                                      "({setting})", {"count": len(texts), "max_length": most,
                                                      "setting": limit.upper()})
        return texts
    return BeforeValidator(check)


def known_label(value: Any, info: ValidationInfo) -> str:
    """One of the app's labels; anything else refused as pydantic refuses a Literal (the message lists them)."""
    labels = limits_of(info).labels
    if isinstance(value, str) and value in labels:
        return value
    *first, last = map(repr, labels)
    raise PydanticKnownError("literal_error", {"expected": f"{', '.join(first)} or {last}" if first else last})


def labels_within(labels: Any, info: ValidationInfo) -> Any:
    """No more labels asked than the app has, refused as pydantic refuses a list over its max_length."""
    count = len(limits_of(info).labels)
    if isinstance(labels, list) and len(labels) > count:
        raise PydanticKnownError("too_long", {"field_type": "List", "max_length": count,
                                              "actual_length": len(labels)})
    return labels


def top_k_within(k: int, info: ValidationInfo) -> int:
    count = len(limits_of(info).labels)
    if k > count:
        raise PydanticKnownError("less_than_equal", {"le": count})
    return k


Text = Annotated[str, AfterValidator(within_max_chars), Field(json_schema_extra=fill(maxLength="max_chars"))]
PredictTexts = Annotated[list[Text], Field(min_length=1, json_schema_extra=fill(maxItems="max_texts")),
                         texts_within("max_texts")]
ExplainTexts = Annotated[list[Text], Field(min_length=1, json_schema_extra=fill(maxItems="max_explain_texts")),
                         texts_within("max_explain_texts")]
Label = Annotated[str, Field(json_schema_extra=fill(enum="labels"))]  # one of the checkpoint's labels
KnownLabels = Annotated[list[Annotated[str, PlainValidator(known_label, json_schema_input_type=Label)]],
                        Field(json_schema_extra=fill(maxItems="label_count")), BeforeValidator(labels_within)]
AskedLabels = Annotated[KnownLabels, Field(min_length=1)]
TopKCount = Annotated[int, Field(ge=1, json_schema_extra=fill(maximum="label_count")), AfterValidator(top_k_within)]


class TextsRequest(BaseModel):
    """A request with exactly one of "text" (a string) and "texts" (a list); each route bounds "texts"."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: Text | None = None
    texts: list[Text] | None = None

    @model_validator(mode="after")
    def _one_of_text_and_texts(self) -> Self:
        if "text" in self.model_fields_set and self.text is None:
            raise PydanticCustomError("invalid_text", '"text" must be a string, got null')
        if (self.text is None) == (self.texts is None):
            raise PydanticCustomError("invalid_request", 'give exactly one of "text" (a string) or "texts" (a list)')
        return self


class PredictRequest(TextsRequest):
    """Exactly one of "text" and "texts"."""

    texts: PredictTexts | None = None
    top_k: TopKCount | None = Field(None, description="Also list the k best labels with their scores.")


class ExplainRequest(TextsRequest):
    """Exactly one of "text" and "texts"; "labels" to explain, default the predicted ones."""

    texts: ExplainTexts | None = None
    labels: AskedLabels | None = Field(
        None, description="Labels to explain; default: the predicted labels, or the best-scoring one when none "
                          "is predicted (multi-class: the top class).")


class CorrectionRequest(BaseModel):
    """A person's labels for one text, appended to CORRECTIONS_FILE for `--extra-data` to train on."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: Text
    labels: KnownLabels = Field(description="The text's right labels: any number for a multi-label model ([] for "
                                            "none), exactly one class for a multi-class model.")
    model_labels: KnownLabels | None = Field(None, description="What the model predicted, kept beside them.")


class CorrectionAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    saved: dict[str, Any] = Field(description="The line appended: text, labels, model_labels, checkpoint_id, "
                                              "saved_at.")
    file: str = Field(description="The corrections file's name (CORRECTIONS_FILE).")
    file_bytes: int = Field(description="Its size with this line.")


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


class Scores(RootModel[dict[str, float]]):
    """Every label's score, in the checkpoint's label order."""

    model_config = ConfigDict(json_schema_extra={"additionalProperties": False,
                                                 **fill(properties="scores", required="labels")})


class TopK(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Label
    score: float


NONE_OF_THESE = Field(None, description="Multi-class checkpoints with a 'none of these' rule: the text fits none "
                      "of the classes (labels is then empty, or the data's own none class).")
NONE_SCORE = Field(None, description="With a 'none of these' rule: 1 minus the best class's score, or where the "
                   "data had a none class its share against the best other class; 'none of these' at or above the "
                   "checkpoint's none_threshold (/metadata).")


class Prediction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: list[Label]
    scores: Scores
    truncated: bool = Field(description="The text was cut to the model's length.")
    top_k: list[TopK] = Field(default_factory=list, description="Only when asked for.")
    none_of_these: bool | None = NONE_OF_THESE
    none_score: float | None = NONE_SCORE


class PredictAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    predictions: list[Prediction]
    model: ModelSummary


class Word(BaseModel):
    model_config = ConfigDict(extra="forbid")
    word: str
    start: int = Field(ge=0, description="Offset of its first character in the text (Unicode code points).")
    end: int = Field(ge=0, description="Offset just after its last character.")


class Explanation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: list[Label] = Field(description="The predicted labels.")
    scores: Scores
    truncated: bool = Field(description="The text was cut to the model's length; cut words have no score.")
    none_of_these: bool | None = NONE_OF_THESE
    none_score: float | None = NONE_SCORE
    method: str = Field(description="How the words were scored (docs/EXPLAIN.md).")
    words: list[Word] = Field(description="The words of the text, in order.")
    attributions: dict[Label, list[float | None]] = Field(
        description="Per explained label, one number per word: how much the word raises the label's log-odds "
                    "(multi-label) or log-probability (multi-class); null for a word truncation cut away.")


class ExplainAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    explanations: list[Explanation]
    model: ModelSummary


AnyRequest = TypeVar("AnyRequest", bound=TextsRequest)


def parse_request(model: type[AnyRequest], body: Any, limits: Limits) -> tuple[list[str], AnyRequest]:
    """The texts of a decoded JSON body and the validated request; an ApiError for the most basic problem found."""
    try:
        request = model.model_validate(body, context=limits)
    except ValidationError as error:
        raise error_for(error, model) from None
    return [request.text] if request.text is not None else list(request.texts or ()), request


def parse_correction(body: Any, limits: Limits) -> CorrectionRequest:
    """A validated correction; an ApiError for the most basic problem found."""
    try:
        return CorrectionRequest.model_validate(body, context=limits)
    except ValidationError as error:
        if any(e["type"] == "model_type" for e in error.errors(include_url=False)):
            raise ApiError(422, "invalid_request", 'the body must be a JSON object: {"text": "...", "labels": '
                                                   '["..."]}') from None
        raise error_for(error, CorrectionRequest) from None


def error_for(error: ValidationError, model: type[BaseModel] | None = None) -> ApiError:
    """The ApiError of the highest-priority problem among pydantic's errors."""
    found = [(code_of(e), e) for e in error.errors(include_url=False)]
    code, detail = min(found, key=lambda pair: CODE_PRIORITY.index(pair[0]))
    where = ".".join(map(str, detail["loc"]))
    status = 413 if code in ("too_many_texts", "text_too_long") else 422
    if detail["type"] == "model_type":
        message = 'the body must be a JSON object: {"text": "..."} or {"texts": ["...", ...]}'
    elif detail["type"] == "extra_forbidden":
        fields = ", ".join(model.model_fields) if model is not None else "text, texts, top_k"
        message = f"unknown field {where!r}; expected {fields}"
    elif code == "too_many_texts":
        message = detail["msg"]
    elif code == "text_too_long":
        message = (f"{where} has {len(detail['input'])} characters; the limit is "
                   f"{detail.get('ctx', {}).get('max_length')} (MAX_CHARS)")
    elif code == "invalid_labels" and detail["type"] == "literal_error":
        message = f"{where}: unknown label {detail['input']!r}; {detail['msg'].lower()}"
    else:
        message = f"{where}: {detail['msg']}" if where else detail["msg"]
    return ApiError(status, code, message)


def code_of(detail: Any) -> str:
    kind, loc = detail["type"], detail["loc"]
    if kind in CODE_PRIORITY:
        return kind
    if loc[:1] in (("labels",), ("model_labels",)):
        return "invalid_labels"
    if loc == ("texts",) and kind == "too_short":
        return "empty_texts"
    if loc[:1] in (("text",), ("texts",)) and kind in ("string_type", "string_unicode"):
        return "invalid_text"
    return "invalid_request"
