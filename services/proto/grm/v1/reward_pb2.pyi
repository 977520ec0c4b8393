from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AggregationMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_METHOD_UNSPECIFIED: _ClassVar[AggregationMethod]
    AGGREGATION_METHOD_VOTING: _ClassVar[AggregationMethod]
    AGGREGATION_METHOD_META_VOTING: _ClassVar[AggregationMethod]

class CachePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_POLICY_USE: _ClassVar[CachePolicy]
    CACHE_POLICY_REFRESH: _ClassVar[CachePolicy]
    CACHE_POLICY_BYPASS: _ClassVar[CachePolicy]
AGGREGATION_METHOD_UNSPECIFIED: AggregationMethod
AGGREGATION_METHOD_VOTING: AggregationMethod
AGGREGATION_METHOD_META_VOTING: AggregationMethod
CACHE_POLICY_USE: CachePolicy
CACHE_POLICY_REFRESH: CachePolicy
CACHE_POLICY_BYPASS: CachePolicy

class Message(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ScoreInput(_message.Message):
    __slots__ = ("conversation", "responses", "principles", "reference")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    PRINCIPLES_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    conversation: _containers.RepeatedCompositeFieldContainer[Message]
    responses: _containers.RepeatedScalarFieldContainer[str]
    principles: str
    reference: str
    def __init__(self, conversation: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., responses: _Optional[_Iterable[str]] = ..., principles: _Optional[str] = ..., reference: _Optional[str] = ...) -> None: ...

class SamplingOptions(_message.Message):
    __slots__ = ("k", "temperature", "top_p", "max_new_tokens", "seed", "shuffle", "adaptive", "adaptive_z", "shared_principles")
    K_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SHUFFLE_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_Z_FIELD_NUMBER: _ClassVar[int]
    SHARED_PRINCIPLES_FIELD_NUMBER: _ClassVar[int]
    k: int
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    shuffle: bool
    adaptive: str
    adaptive_z: float
    shared_principles: bool
    def __init__(self, k: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., max_new_tokens: _Optional[int] = ..., seed: _Optional[int] = ..., shuffle: _Optional[bool] = ..., adaptive: _Optional[str] = ..., adaptive_z: _Optional[float] = ..., shared_principles: _Optional[bool] = ...) -> None: ...

class AggregationOptions(_message.Message):
    __slots__ = ("method", "k_meta")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    K_META_FIELD_NUMBER: _ClassVar[int]
    method: AggregationMethod
    k_meta: int
    def __init__(self, method: _Optional[_Union[AggregationMethod, str]] = ..., k_meta: _Optional[int] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("input", "sampling", "aggregation", "cache_policy", "return_judgments")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    CACHE_POLICY_FIELD_NUMBER: _ClassVar[int]
    RETURN_JUDGMENTS_FIELD_NUMBER: _ClassVar[int]
    input: ScoreInput
    sampling: SamplingOptions
    aggregation: AggregationOptions
    cache_policy: CachePolicy
    return_judgments: bool
    def __init__(self, input: _Optional[_Union[ScoreInput, _Mapping]] = ..., sampling: _Optional[_Union[SamplingOptions, _Mapping]] = ..., aggregation: _Optional[_Union[AggregationOptions, _Mapping]] = ..., cache_policy: _Optional[_Union[CachePolicy, str]] = ..., return_judgments: _Optional[bool] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: ScoreResult
    def __init__(self, result: _Optional[_Union[ScoreResult, _Mapping]] = ...) -> None: ...

class ScoreBatchRequest(_message.Message):
    __slots__ = ("items", "sampling", "aggregation", "cache_policy", "return_judgments")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    CACHE_POLICY_FIELD_NUMBER: _ClassVar[int]
    RETURN_JUDGMENTS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoreInput]
    sampling: SamplingOptions
    aggregation: AggregationOptions
    cache_policy: CachePolicy
    return_judgments: bool
    def __init__(self, items: _Optional[_Iterable[_Union[ScoreInput, _Mapping]]] = ..., sampling: _Optional[_Union[SamplingOptions, _Mapping]] = ..., aggregation: _Optional[_Union[AggregationOptions, _Mapping]] = ..., cache_policy: _Optional[_Union[CachePolicy, str]] = ..., return_judgments: _Optional[bool] = ...) -> None: ...

class ScoreBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ItemResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ItemResult, _Mapping]]] = ...) -> None: ...

class ItemResult(_message.Message):
    __slots__ = ("result", "error")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    result: ScoreResult
    error: Status
    def __init__(self, result: _Optional[_Union[ScoreResult, _Mapping]] = ..., error: _Optional[_Union[Status, _Mapping]] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ResponseScore(_message.Message):
    __slots__ = ("scored", "reward", "vote_sum", "spread", "expected_reward")
    SCORED_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    VOTE_SUM_FIELD_NUMBER: _ClassVar[int]
    SPREAD_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REWARD_FIELD_NUMBER: _ClassVar[int]
    scored: bool
    reward: float
    vote_sum: int
    spread: float
    expected_reward: float
    def __init__(self, scored: _Optional[bool] = ..., reward: _Optional[float] = ..., vote_sum: _Optional[int] = ..., spread: _Optional[float] = ..., expected_reward: _Optional[float] = ...) -> None: ...

class Judgment(_message.Message):
    __slots__ = ("principles", "critique", "scores", "permutation", "valid", "invalid_reason", "meta_score", "text", "num_tokens", "expected_scores")
    PRINCIPLES_FIELD_NUMBER: _ClassVar[int]
    CRITIQUE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    PERMUTATION_FIELD_NUMBER: _ClassVar[int]
    VALID_FIELD_NUMBER: _ClassVar[int]
    INVALID_REASON_FIELD_NUMBER: _ClassVar[int]
    META_SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SCORES_FIELD_NUMBER: _ClassVar[int]
    principles: str
    critique: str
    scores: _containers.RepeatedScalarFieldContainer[int]
    permutation: _containers.RepeatedScalarFieldContainer[int]
    valid: bool
    invalid_reason: str
    meta_score: float
    text: str
    num_tokens: int
    expected_scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, principles: _Optional[str] = ..., critique: _Optional[str] = ..., scores: _Optional[_Iterable[int]] = ..., permutation: _Optional[_Iterable[int]] = ..., valid: _Optional[bool] = ..., invalid_reason: _Optional[str] = ..., meta_score: _Optional[float] = ..., text: _Optional[str] = ..., num_tokens: _Optional[int] = ..., expected_scores: _Optional[_Iterable[float]] = ...) -> None: ...

class ScoreResult(_message.Message):
    __slots__ = ("responses", "num_samples", "num_valid", "num_used", "best", "aggregation", "invalid_reasons", "judgments", "from_cache", "prompt_tokens", "completion_tokens", "latency_ms", "stop_reason")
    class InvalidReasonsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_VALID_FIELD_NUMBER: _ClassVar[int]
    NUM_USED_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    INVALID_REASONS_FIELD_NUMBER: _ClassVar[int]
    JUDGMENTS_FIELD_NUMBER: _ClassVar[int]
    FROM_CACHE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[ResponseScore]
    num_samples: int
    num_valid: int
    num_used: int
    best: int
    aggregation: AggregationMethod
    invalid_reasons: _containers.ScalarMap[str, int]
    judgments: _containers.RepeatedCompositeFieldContainer[Judgment]
    from_cache: bool
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    stop_reason: str
    def __init__(self, responses: _Optional[_Iterable[_Union[ResponseScore, _Mapping]]] = ..., num_samples: _Optional[int] = ..., num_valid: _Optional[int] = ..., num_used: _Optional[int] = ..., best: _Optional[int] = ..., aggregation: _Optional[_Union[AggregationMethod, str]] = ..., invalid_reasons: _Optional[_Mapping[str, int]] = ..., judgments: _Optional[_Iterable[_Union[Judgment, _Mapping]]] = ..., from_cache: _Optional[bool] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., latency_ms: _Optional[float] = ..., stop_reason: _Optional[str] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_responses", "max_k", "max_new_tokens", "max_batch_items", "max_text_chars", "max_messages", "max_message_bytes")
    MAX_RESPONSES_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_responses: int
    max_k: int
    max_new_tokens: int
    max_batch_items: int
    max_text_chars: int
    max_messages: int
    max_message_bytes: int
    def __init__(self, max_responses: _Optional[int] = ..., max_k: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., max_batch_items: _Optional[int] = ..., max_text_chars: _Optional[int] = ..., max_messages: _Optional[int] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class CacheInfo(_message.Message):
    __slots__ = ("backend", "state")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    backend: str
    state: str
    def __init__(self, backend: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("model_id", "revision", "template_version", "max_context", "limits", "cache", "meta_rm_id", "default_sampling", "server_version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    META_RM_ID_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    revision: str
    template_version: str
    max_context: int
    limits: Limits
    cache: CacheInfo
    meta_rm_id: str
    default_sampling: SamplingOptions
    server_version: str
    def __init__(self, model_id: _Optional[str] = ..., revision: _Optional[str] = ..., template_version: _Optional[str] = ..., max_context: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., cache: _Optional[_Union[CacheInfo, _Mapping]] = ..., meta_rm_id: _Optional[str] = ..., default_sampling: _Optional[_Union[SamplingOptions, _Mapping]] = ..., server_version: _Optional[str] = ...) -> None: ...
