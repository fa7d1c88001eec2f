"""flashkit: resilience primitives for LLM pipelines, tuned with evidence in Jupyter.

Every public name of the primitives is re-exported here; each lives in the module named after
its idea: ``flashkit.clock``, ``flashkit.errors``, ``flashkit.retry``, ``flashkit.budget``,
``flashkit.breaker``, ``flashkit.ratelimit``, ``flashkit.redis_ratelimit``,
``flashkit.adaptive``, ``flashkit.cache``, ``flashkit.logs``. The larger subsystems re-export
their main names and keep the rest in their namespace: ``flashkit.client`` (the resilient LLM
client) and ``flashkit.telemetry`` (metric names, span schema); ``flashkit.db`` (engines and
the pool monitor) serves the cache's SQL store and the application. The application and the
test bench live in their own packages and are not imported here: ``flashkit.flashcards`` (the
flashcard pipeline), ``flashkit.config`` (its settings), ``flashkit.sim`` (the simulated
upstream) and ``flashkit.lab`` (the experiments behind the notebooks).
"""

from flashkit.adaptive import AdaptiveRateLimiter, AdaptiveStats
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
from flashkit.cache import (
    CacheService,
    CacheStats,
    CompressedCache,
    MemoryStore,
    RedisStore,
    SQLStore,
    Store,
    train_dictionary,
)
from flashkit.client import ChatResult, LLMClient, Usage
from flashkit.clock import (
    Clock,
    SystemClock,
    VirtualClock,
    VirtualEventLoop,
    WallClock,
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
from flashkit.logs import StructuredFormatter, configure_logging
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
from flashkit.telemetry import (
    Telemetry,
    configure_opentelemetry,
    get_meter,
    get_tracer,
    instrument_breaker,
    instrument_budget,
    instrument_limiter,
    retry_hooks,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "AdaptiveRateLimiter",
    "AdaptiveStats",
    "Algorithm",
    "Attempt",
    "AuthenticationError",
    "BreakDurationContext",
    "BudgetStats",
    "CacheError",
    "CacheService",
    "CacheStats",
    "ChatResult",
    "CircuitBreaker",
    "CircuitBreakerManualControl",
    "CircuitBreakerStateProvider",
    "CircuitBreakerStats",
    "CircuitOpenError",
    "CircuitState",
    "classify",
    "Clock",
    "CompressedCache",
    "configure_logging",
    "configure_opentelemetry",
    "DatabaseError",
    "default_clock",
    "ErrorCategory",
    "ExternalServiceError",
    "get_meter",
    "get_tracer",
    "instrument_breaker",
    "instrument_budget",
    "instrument_limiter",
    "is_retryable",
    "Jitter",
    "LimiterStats",
    "LLMClient",
    "MemoryStore",
    "MultiLimit",
    "MultiReservation",
    "PercentBudget",
    "RateLimiter",
    "RateLimitError",
    "RateLimitResult",
    "redact",
    "RedisDecision",
    "RedisRateLimiter",
    "RedisStore",
    "retry",
    "retry_after_of",
    "retry_hooks",
    "RetryBudget",
    "RetryConfig",
    "RetryEvent",
    "RetryExhausted",
    "retrying",
    "Retrying",
    "run_virtual",
    "ShardedRateLimiter",
    "SQLStore",
    "StateChange",
    "Store",
    "StructuredError",
    "StructuredFormatter",
    "SystemClock",
    "Telemetry",
    "TokenBucketBudget",
    "TokenRatioBudget",
    "TokenReservation",
    "train_dictionary",
    "Usage",
    "use_clock",
    "ValidationError",
    "VirtualClock",
    "VirtualEventLoop",
    "WallClock",
]
