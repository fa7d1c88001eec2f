"""flashkit: resilience primitives for LLM pipelines, tuned with evidence in Jupyter.

Every public name is re-exported here; each lives in the module named after its idea:
``flashkit.clock``, ``flashkit.errors``, ``flashkit.retry``, ``flashkit.budget``,
``flashkit.breaker``, ``flashkit.ratelimit``, ``flashkit.redis_ratelimit``.
"""

from flashkit.breaker import (
    BreakDurationContext,
    CircuitBreaker,
    CircuitBreakerManualControl,
    CircuitBreakerStateProvider,
    CircuitBreakerStats,
    CircuitState,
    StateChange,
)
from flashkit.budget import (
    BudgetStats,
    PercentBudget,
    RetryBudget,
    TokenBucketBudget,
    TokenRatioBudget,
)
from flashkit.clock import (
    Clock,
    SystemClock,
    VirtualClock,
    VirtualEventLoop,
    default_clock,
    run_virtual,
    use_clock,
)
from flashkit.errors import (
    AuthenticationError,
    CacheError,
    CircuitOpenError,
    DatabaseError,
    ErrorCategory,
    ExternalServiceError,
    RateLimitError,
    RetryExhausted,
    StructuredError,
    ValidationError,
    classify,
    is_retryable,
    redact,
    retry_after_of,
)
from flashkit.ratelimit import (
    Algorithm,
    LimiterStats,
    MultiLimit,
    MultiReservation,
    RateLimiter,
    RateLimitResult,
    ShardedRateLimiter,
    TokenReservation,
)
from flashkit.redis_ratelimit import RedisDecision, RedisRateLimiter
from flashkit.retry import (
    Attempt,
    Jitter,
    RetryConfig,
    RetryEvent,
    Retrying,
    retry,
    retrying,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Algorithm",
    "Attempt",
    "AuthenticationError",
    "BreakDurationContext",
    "BudgetStats",
    "CacheError",
    "CircuitBreaker",
    "CircuitBreakerManualControl",
    "CircuitBreakerStateProvider",
    "CircuitBreakerStats",
    "CircuitOpenError",
    "CircuitState",
    "classify",
    "Clock",
    "DatabaseError",
    "default_clock",
    "ErrorCategory",
    "ExternalServiceError",
    "is_retryable",
    "Jitter",
    "LimiterStats",
    "MultiLimit",
    "MultiReservation",
    "PercentBudget",
    "RateLimiter",
    "RateLimitError",
    "RateLimitResult",
    "redact",
    "RedisDecision",
    "RedisRateLimiter",
    "retry",
    "retry_after_of",
    "RetryBudget",
    "RetryConfig",
    "RetryEvent",
    "RetryExhausted",
    "Retrying",
    "retrying",
    "run_virtual",
    "ShardedRateLimiter",
    "StateChange",
    "StructuredError",
    "SystemClock",
    "TokenBucketBudget",
    "TokenRatioBudget",
    "TokenReservation",
    "use_clock",
    "ValidationError",
    "VirtualClock",
    "VirtualEventLoop",
]
