"""One settings object for the whole service, read from `CONFIDENCE_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_cache_dir, user_data_dir
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The training job exports here; the shipped default adapter lives under it.
DEFAULT_ADAPTER_ROOT = Path(__file__).resolve().parent.parent / "adapters" / "exported"
DEFAULT_ADAPTER_NAME = "smollm2-135m-uncertainty"


class Settings(BaseSettings):
    """Service configuration. Every field is `CONFIDENCE_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="CONFIDENCE_", env_ignore_empty=True, extra="ignore")

    model: str | None = Field(
        default=None,
        description="HF model directory or vLLM model path; unset = the embedded SmolLM2-135M-Instruct.",
    )
    served_model_name: str | None = Field(default=None, description="Name reported in responses.")
    model_cache_dir: Path = Field(
        default=Path(user_cache_dir("confidence-service")) / "models",
        description="Where the embedded model is converted and cached.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Serve /metrics only on this second port (and not on `port`), so a network policy "
        "can let monitoring reach the metrics alone; unset = /metrics on `port`.",
    )

    adapter_root: Path = Field(default=DEFAULT_ADAPTER_ROOT, description="Directory of exported adapters.")
    default_adapter: str | None = Field(
        default=DEFAULT_ADAPTER_NAME,
        description="Adapter used when a request names none; empty/absent adapter = zero-shot only.",
    )
    max_loras: int = Field(default=4, ge=1, description="Adapters resident in one batch (vLLM max_loras).")
    max_lora_rank: int = Field(default=16, ge=1, description="Largest LoRA rank the engine accepts.")
    max_cpu_loras: int | None = Field(
        default=None,
        ge=1,
        description="Adapters cached in host memory (default: max_loras); more on disk still work, "
        "re-read on use.",
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token for /admin/*; unset disables the admin API."
    )
    adapter_drain_timeout_s: float = Field(
        default=30.0, gt=0, description="How long an unload waits for requests still using the adapter."
    )

    max_model_len: int = Field(default=2048, ge=64, description="Context length (prompt + answer + query).")
    kv_cache_gib: float | None = Field(
        default=None, gt=0, description="KV-cache size in GiB; required sizing on CPU (default 1 GiB)."
    )
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(
        default=1, ge=1, description="GPUs one replica shards the model over (vLLM tensor_parallel_size)."
    )
    dtype: str = "auto"
    seed: int = 0
    enforce_eager: bool = False
    kv_block_size: int | None = Field(
        default=None,
        ge=1,
        description="Tokens per KV-cache block (vLLM block_size; prefix caching reuses whole blocks). "
        "Default: 32 on CPU (vLLM's 128 leaves a short prompt + answer no full block to reuse), "
        "vLLM's own default on GPU.",
    )

    max_num_batched_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Tokens one engine step may hold (vLLM max_num_batched_tokens, the chunked-prefill "
        "budget; at least vLLM's max_num_seqs, 128): smaller keeps running decodes from waiting on "
        "confidence prefills, larger batches more prefill per step. Default: vLLM's (2048 on CPU); "
        "`python -m bench.prefill_budget` measures the trade-off.",
    )

    default_max_tokens: int = Field(default=128, ge=1)
    max_tokens_limit: int = Field(default=1024, ge=1, description="Largest max_tokens a request may ask.")
    max_score_items: int = Field(default=64, ge=1, description="Largest /score batch.")
    max_inflight_sequences: int = Field(
        default=256, ge=1, description="Sequences in flight before new requests get 429 + Retry-After."
    )
    query_reserve_tokens: int = Field(
        default=64, ge=0, description="Context kept free after the answer for the confidence query."
    )
    request_timeout_s: float = Field(
        default=300.0,
        ge=0,
        description="Longest a /generate or /score request may run before it gets a 504 and its engine "
        "work is aborted; 0 = no limit.",
    )
    max_body_bytes: int | None = Field(
        default=None,
        ge=1024,
        description="Largest request body; larger ones get 413 before parsing. Default: "
        "max_model_len × 512 bytes, at least 1 MiB (a full context of text, UTF-8 and JSON-escaped, "
        "with room for a /score batch).",
    )
    tokenizer_threads: int = Field(
        default=1, ge=1, description="Threads that render and tokenize prompts (off the event loop)."
    )
    watchdog_interval_s: float = Field(
        default=2.0, gt=0, description="How often the engine's health is checked once serving."
    )
    watchdog_canary_interval_s: float = Field(
        default=30.0, gt=0, description="How often the watchdog makes one tiny real engine read."
    )
    watchdog_canary_timeout_s: float = Field(
        default=60.0, gt=0, description="A canary read slower than this counts as no progress."
    )
    watchdog_canary_failures: int = Field(
        default=2,
        ge=1,
        description="Slow canary reads in a row after which the engine counts as wedged "
        "and the process exits (the orchestrator restarts it).",
    )
    startup_timeout_s: float = Field(
        default=1800.0,
        ge=0,
        description="Longest start-up (model fetch, load, warm-up) before /health turns 503 and the "
        "process exits; 0 = no limit.",
    )
    log_level: str = "info"
    drain_timeout_s: int = Field(
        default=30,
        ge=0,
        description="On SIGTERM: stop accepting, let in-flight requests finish for at most this long, "
        "then cancel them and exit.",
    )

    feedback_db_path: Path = Field(
        default=Path(user_data_dir("confidence-service")) / "feedback.sqlite3",
        description="SQLite file of served responses and their feedback (used when no URL is set).",
    )
    feedback_db_url: str | None = Field(
        default=None, description="PostgreSQL URL (postgresql://user:pass@host/db); set = PostgreSQL."
    )
    feedback_store_prompts: bool = Field(
        default=False,
        description="Keep question and answer text with each served response (needed to export "
        "feedback as training data); off by default: prompts may be personal data.",
    )
    feedback_retention_days: float = Field(
        default=90, ge=0, description="Served responses older than this are deleted; 0 keeps them forever."
    )
    feedback_queue_size: int = Field(
        default=10_000,
        ge=1,
        description="Served responses waiting to be recorded; when full, new ones are dropped (counted) "
        "rather than delaying answers.",
    )
    feedback_store_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Bound on each wait for the outcome store (connect, lock, statement); /feedback "
        "and /calibration answer 503 past it.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or CIDR networks of the gateway: only from these is the X-Confidence-Client "
        "header believed (JSON list in the environment).",
    )
    feedback_labellers: list[str] = Field(
        default_factory=list,
        description="Client ids that may label any response; others only label what was served to them.",
    )
    calibration_trusted_only: bool = Field(
        default=False,
        description="Count only labels from feedback_labellers in /calibration, the calibration metrics "
        "(and their alerts) and feedback exports.",
    )
    drift_window: int = Field(
        default=500, ge=10, description="Recent confidences per adapter compared with its reference (PSI)."
    )

    selective_delta: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="target_error_rate: the chosen threshold's error rate among answered items exceeds "
        "the target with probability at most this.",
    )
    selective_min_live_labels: int = Field(
        default=200,
        ge=1,
        description="target_error_rate: live labels of a version needed before they replace the "
        "calibration split recorded with it.",
    )

    selective_cache_ttl_s: float = Field(
        default=300.0,
        gt=0,
        description="target_error_rate: thresholds are recomputed at least this often (labels sent to "
        "other replicas), and at once when a label arrives here.",
    )

    def body_limit(self) -> int:
        return self.max_body_bytes or max(1 << 20, self.max_model_len * 512)

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("default_max_tokens must not exceed max_tokens_limit")
        if self.feedback_db_url is not None and not self.feedback_db_url.startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError(
                "feedback_db_url must be a postgresql:// URL (unset = SQLite at feedback_db_path)"
            )
        return self
