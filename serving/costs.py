"""What a request costs before it runs, and the budget it must fit: 413 for more than MAX_TOKENS tokens or more
than MAX_REQUEST_COST of work.

The unit of work is a token through the transformer (`predict_cost`, `explain_cost`): /predict costs the tokens of
its texts as the model reads them, cut or in windows (every window's tokens: a long text read whole costs in
proportion to its length, up to max_windows windows); /explain about one forward pass of each text per word, and
for a blended checkpoint the TF-IDF member scoring the whole text once per word (its characters converted to
tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

from inferer import ModelInferer
from serving.errors import ApiError
from serving.settings import ServingSettings
from utils.inference.explain import DEFAULT_METHOD, prepare_text, transformer_tokens
from utils.inference.inputs import validate_texts

# The TF-IDF member's characters that take the CPU time of one transformer token: 512k characters a second against
# 3.5k tokens a second for all-MiniLM-L6-v2 at 64 tokens, one thread, AMD EPYC (docs/SERVING.md).
LEXICAL_CHARS_PER_TOKEN = 150
# An explanation's TF-IDF scoring of the text without each word takes as long as reading the text this many times
# (models/lexical_occlusion.py; 3.9x at 2,000 characters of toxic comments, 5.1x at 20,000: docs/SERVING.md).
OCCLUSION_READINGS = 5


def token_counts(inferer: ModelInferer, texts: Sequence[str]) -> list[int]:
    """Tokens each text feeds the model: special tokens included, cut to max_length or in windows."""
    return inferer.reading.encode(inferer.tokenizer, validate_texts(texts)).tokens_per_text.tolist()


def lexical_cost(inferer: ModelInferer, chars: int) -> int:
    """What the TF-IDF member scoring `chars` characters costs, in transformer tokens (0 without one)."""
    return -(-chars // LEXICAL_CHARS_PER_TOKEN) if inferer.lexical is not None else 0


def predict_cost(inferer: ModelInferer, texts: Sequence[str]) -> int:
    """The work of scoring `texts`, in tokens through the transformer (the TF-IDF member's converted)."""
    return sum(token_counts(inferer, texts)) + lexical_cost(inferer, sum(len(text) for text in texts))


def explain_cost(inferer: ModelInferer, text: str, label_count: int, method: str = DEFAULT_METHOD) -> int:
    """The work of `inferer.explain(text)` for `label_count` labels, in predict_cost's unit: its prediction, then
    the method's passes; a blend's TF-IDF member scores the text OCCLUSION_READINGS times more (the text without
    each word, updated around each)."""
    item = prepare_text(inferer.tokenizer, text, inferer.reading)
    chars = (1 + OCCLUSION_READINGS) * len(text)
    read = sum(len(window.input_ids) for window in item.windows)
    return read + transformer_tokens(method, item, label_count) + lexical_cost(inferer, chars)


def check_predict_cost(settings: ServingSettings, inferer: ModelInferer, texts: list[str]) -> None:
    """413 when the texts make more than MAX_TOKENS tokens (as read: cut, or every window) or cost over
    MAX_REQUEST_COST. Tokenized here only when a limit can bind: truncating, with the defaults (64 texts of at most
    128 tokens), none can."""
    limit, reading = settings.max_tokens, inferer.reading
    most_per_text = reading.max_length * (reading.max_windows if reading.long_texts == "windows" else 1)
    lexical = lexical_cost(inferer, sum(len(text) for text in texts))
    if len(texts) * most_per_text <= limit and len(texts) * most_per_text + lexical <= settings.max_request_cost:
        return
    tokens = sum(token_counts(inferer, texts))
    read = (f"each text cut to {reading.max_length}" if reading.long_texts == "truncate" else
            f"long texts read whole in windows of {reading.max_length}, at most {reading.max_windows} a text")
    if tokens > limit:
        raise ApiError(413, "too_many_tokens", f"the texts make {tokens} tokens ({read}); "
                                               f"the limit is {limit} per request (MAX_TOKENS)")
    if tokens + lexical > settings.max_request_cost:
        raise over_budget(settings, "scoring these texts", [tokens + lexical], "send fewer or shorter texts")


def check_explain_cost(settings: ServingSettings, inferer: ModelInferer, texts: list[str],
                       labels: Sequence[str] | None) -> None:
    """413 when explaining the texts would cost more than MAX_REQUEST_COST."""
    label_count = len(labels) if labels else len(inferer.label_names)
    costs = [explain_cost(inferer, text, label_count) for text in texts]
    if sum(costs) <= settings.max_request_cost:
        return
    lexical = ", and its characters: the TF-IDF member reads it again" if inferer.lexical is not None else ""
    raise over_budget(settings, "explaining these texts", costs,
                      "send fewer texts or shorter ones (the cost of a text grows with the words the model sees x "
                      f"its tokens: a forward pass without each word{lexical}); "
                      "the number of labels asked does not change it")


def over_budget(settings: ServingSettings, what: str, costs: list[int], advice: str) -> ApiError:
    """The 413 of a request whose work is over MAX_REQUEST_COST, with its cost and how to bring it down."""
    costliest = max(range(len(costs)), key=costs.__getitem__)
    per_text = f" (the costliest, text {costliest}, {costs[costliest]})" if len(costs) > 1 else ""
    return ApiError(413, "over_budget", f"{what} costs {sum(costs)} tokens of model work{per_text}; the limit is "
                                        f"{settings.max_request_cost} per request (MAX_REQUEST_COST): {advice}")
