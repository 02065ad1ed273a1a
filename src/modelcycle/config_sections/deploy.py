"""The sections of what follows training: serve, monitor and track."""

from __future__ import annotations

import warnings
from typing import Literal

from pydantic import Field

from modelcycle.config_sections.base import Section


class ServeSection(Section):
    """``modelcycle serve``: batching, limits and auth. Every limit exists so that one bad or
    greedy client gets a clear 4xx (or a 503 to retry) instead of slowing everyone down."""

    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 serves other machines too")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on; 0: any free port (printed at start)")
    backend: Literal["auto", "torch", "onnx", "torchscript", "pt2"] = Field(
        "auto", description="auto (what the package holds), torch, onnx, torchscript or pt2"
    )
    max_batch_size: int = Field(32, ge=1, description="images run as one batch; 1 turns batching off")
    max_batch_delay_ms: float = Field(5.0, ge=0, description="how long a batch waits to fill once it has one image")
    max_queue: int = Field(256, ge=1, description="images waiting per model; beyond it requests get 503 + Retry-After")
    max_images: int = Field(64, ge=1, description="most images in one request (more: 413)")
    max_body_mb: float = Field(16.0, gt=0, description="largest request body in MB; larger gets 413")
    max_pixels: int = Field(40_000_000, ge=1, description="per image, checked before decoding (decompression bombs)")
    body_timeout_s: float = Field(10.0, gt=0, description="to receive the request body; slower gets 408")
    request_timeout_s: float = Field(30.0, gt=0, description="to answer once the body is in; longer gets 504")
    graceful_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM, how long in-flight requests may finish")
    topk: int = Field(5, ge=1, description="classes returned per image, best first")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the Bearer key")
    metrics_auth: bool = Field(
        False, description="image server: /metrics needs the API key too (default: open to scrapers)"
    )
    preprocess_threads: int | None = Field(
        None, description="threads decoding and resizing images; None: one per CPU core"
    )
    max_new_tokens: int = Field(
        512, ge=1, description="language models: most tokens one request may generate (more: 400)"
    )
    max_prompt_chars: int = Field(
        1_000_000, ge=1, description="language models: characters of a request's prompts (more: 400)"
    )
    max_prompts: int = Field(
        16, ge=1, description="language models: prompts in one /v1/completions request (more: 400)"
    )
    max_active: int = Field(
        32, ge=1, description="language models: answers decoded as one batch (continuous); the rest queue"
    )
    max_n: int = Field(8, ge=1, description="language models: choices per prompt (n; more: 400)")
    max_stop: int = Field(4, ge=1, description="language models: stop strings in one request (more: 400)")
    max_top_logprobs: int = Field(
        20, ge=0, description="language models: top_logprobs (chat) / logprobs (completions) (more: 400)"
    )


class MonitorSection(Section):
    """Production monitoring (``modelcycle serve --monitor DIR``, ``modelcycle monitor``): what the
    server logs and when a window of served traffic counts as drifted (docs/monitor.md)."""

    dir: str | None = Field(None, description="folder of the prediction log (predictions.db); None: no monitoring")
    sample_rate: float = Field(1.0, gt=0, le=1, description="fraction of served images logged (each drawn at random)")
    keep_inputs: bool = Field(
        False, description="also store each logged image as the model saw it (PNG); never by default"
    )
    # 200: a day of a small service (~10 images an hour), yet every PSI decile bin expects 20
    # values (small-sample bias ~0.045, half the 0.1 warn level) and the embedding's noise,
    # sqrt(8 / 200) = 0.2, stays well under its 0.5 alert; smaller windows get fewer PSI bins
    window: int = Field(200, ge=10, description="logged images per drift window")
    step: int | None = Field(None, ge=1, description="images between window starts; None: the window size (no overlap)")
    psi_warn: float = Field(
        0.1, gt=0, description="Population Stability Index: 0.1 = a shift worth a look (the convention)"
    )
    psi_alert: float = Field(
        0.2, gt=0, description="PSI at which a feature counts as drifted (0.2 = a significant shift, the convention)"
    )
    class_alpha: float = Field(0.001, gt=0, lt=1, description="chi-squared p-value below which the class mix drifted")
    embedding_alert: float = Field(
        0.5, gt=0, description="window-mean shift of the embedding, in reference standard deviations"
    )
    ood_quantile: float = Field(
        0.05, gt=0, lt=0.5, description="calibration: this fraction of validation images counts as OOD"
    )
    ood_alert: float = Field(0.25, gt=0, le=1, description="out-of-distribution rate of a window above which it alerts")
    confidence_drop: float = Field(
        0.15, gt=0, lt=1, description="mean confidence this far below the reference: collapse"
    )
    profile_images: int = Field(
        2000, ge=50, description="validation images the reference profile is computed on (at most)"
    )
    flush_rows: int = Field(64, ge=1, description="rows per SQLite transaction: a crash loses at most these")
    flush_s: float = Field(0.5, gt=0, description="... or what arrived in this many seconds, whichever is first")
    max_pending: int = Field(
        10_000, ge=1, description="rows waiting for the writer; beyond it rows are dropped (and counted)"
    )


with warnings.catch_warnings():
    # pydantic warns that `register` shadows ABCMeta.register, a method of the class, never of an instance:
    # as a field it reads and validates like any other, and `track.register` is the name users write
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class TrackSection(Section):
        """Optional experiment tracking: TensorBoard event files in the run folder, and MLflow
        (``pip install 'modelcycle[mlflow]'``). The run folder stays the source of truth; MLflow
        gets a copy so runs from many machines can be searched, compared and promoted through its
        model registry in one place."""

        mlflow_uri: str | None = Field(
            None,
            description="MLflow tracking URI, e.g. sqlite:///mlflow.db or http://mlflow.internal:5000; None: no MLflow",
        )
        experiment: str = Field(
            "modelcycle", description="MLflow experiment the run is logged in (created on first use)"
        )
        run_name: str | None = Field(None, description="the MLflow run's name; None: run.name")
        register: str | None = Field(
            None, description="registered model name: each finished run adds a version; None: no registry"
        )
        artifact_location: str | None = Field(
            None, description="where a NEW experiment keeps artifacts; None: MLflow's (./mlruns)"
        )
        tensorboard: bool | None = Field(
            None,
            description="event files in RUN/tensorboard for `tensorboard --logdir runs`; None: when tensorboard is "
            "installed (pip install 'modelcycle[tensorboard]'), true: required, false: off",
        )
