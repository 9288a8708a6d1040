"""The served engine: a model behind an OpenAI-compatible HTTP API, measured under load.

The lifecycle drives it like any engine (`pytest_llem.engines.base`): `load` reaches the
server (a `server.url` that already runs, or a `server.command` it starts and waits for),
`prepare` turns the prompts into request bodies and the experiment's arrival schedule,
`generate` sends one whole load (every prompt once, `stream.run_load`) and returns one
`RequestOutput` per request; `release` stops a started server. Like vLLM's offline engine it
schedules requests itself (`schedules_requests`): its unit is the whole load, and its steady
state is ML.ENERGY's, with `concurrency` for `max_num_seqs`.

It runs in the session's process, never in an engine host: the model runs in the server's
process already (a crash there fails requests, never the session), and the client's own CPU
time is read on the thread that drives it. A started server is a child of this process, so the
`estimate` meter counts its CPU time; a server at a URL is outside this process tree, and the
lifecycle stores no estimated energy for it (`outside_process_tree`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llem.datasets import PromptSet
from pytest_llem.engines.base import (
    EngineDefaults,
    LoadedModel,
    LoadPattern,
    LoadSpec,
    ParameterCount,
    PreparedPrompts,
    ProgressObserver,
    RequestOutput,
    ServedCall,
    load_concurrency,
)
from pytest_llem.engines.models import ResolvedModel, resolve_model
from pytest_llem.engines.served.server import PLACEHOLDERS, ServerError, StartedServer, placeholders_in
from pytest_llem.engines.tokens import prompt_token_ids

if TYPE_CHECKING:
    import aiohttp

    from pytest_llem.engines.served.prometheus import Scrape
    from pytest_llem.schema.config import ExperimentConfig, ServerConfig

INSTALL_HINT = "pip install 'pytest-llem[served]'"
SCRAPER_KEY = 0  # `ServerConnection.sessions` key of the scraper's session (a concurrency is >= 1)


@dataclass(frozen=True)
class ServedBatch:
    """One whole load: every request body, when each is due, and how many may be in flight."""

    payloads: list[dict[str, Any]]
    offsets: list[float]
    concurrency: int
    input_tokens: list[int]


@dataclass
class ServerConnection:
    """A reachable server and the client state kept across windows (`LoadedModel.model`)."""

    url: str
    served_model: str
    server: ServerConfig
    started: StartedServer | None
    token_prompts: bool = False  # the server takes a completions prompt as token ids
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    sessions: dict[int, aiohttp.ClientSession] = field(default_factory=dict)
    calls: list[ServedCall] = field(default_factory=list)

    def session(self, concurrency: int) -> aiohttp.ClientSession:
        """The keep-alive session of this concurrency (made on the loop, reused across windows)."""
        import aiohttp

        from pytest_llem.engines.served.stream import READ_BUFFER_BYTES

        if concurrency not in self.sessions:

            async def make() -> aiohttp.ClientSession:
                connector = aiohttp.TCPConnector(limit=max(concurrency, 1), force_close=False)
                return aiohttp.ClientSession(connector=connector, read_bufsize=READ_BUFFER_BYTES)

            self.sessions[concurrency] = self.loop.run_until_complete(make())
        return self.sessions[concurrency]

    def scraper(self) -> aiohttp.ClientSession:
        """The `/metrics` scraper's own session (one connection). Sharing the load's would make
        a scrape wait for a free connection: for the instant between one request's end and the
        next one's start, so it would read one running request fewer than ran (as it did)."""
        return self.session(SCRAPER_KEY)

    def close(self) -> None:
        for session in self.sessions.values():
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(session.close())
        self.sessions.clear()
        self.loop.close()
        if self.started is not None:
            self.started.stop()


def _served_models(url: str) -> list[str]:
    """The model ids `GET /v1/models` lists."""
    import httpx

    try:
        response = httpx.get(f"{url}/v1/models", timeout=10)
    except httpx.HTTPError as exc:
        raise ServerError(
            f"server.url={url!r} cannot be reached ({type(exc).__name__}: {exc}); start the server, "
            "or check the host and port"
        ) from None
    if response.status_code != 200:
        raise ServerError(
            f"server.url={url!r}: GET /v1/models answered HTTP {response.status_code}; is it an "
            "OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp's llama-server, Ollama)?"
        )
    return [str(entry.get("id")) for entry in response.json().get("data", [])]


def _takes_token_ids(url: str, served_model: str) -> bool:
    """Whether the server takes a completions prompt as token ids (vLLM and SGLang do; the
    OpenAI API allows it; llama-cpp-python's server answers 422 or 500): one request of one
    token, asked once at load."""
    import httpx

    body = {"model": served_model, "prompt": [1], "max_tokens": 1, "temperature": 0.0}
    try:
        return httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code == 200
    except httpx.HTTPError:
        return False


class OpenAIServedBackend(EngineDefaults):
    """The `openai` engine: any server that speaks the OpenAI completions/chat API, streamed."""

    name = "openai"
    schedules_requests = True
    takes_load_pattern = True
    observes_steps = True

    def version(self) -> str | None:
        try:
            return f"aiohttp {metadata.version('aiohttp')}"
        except metadata.PackageNotFoundError:
            return None

    def settings_problems(self, config: ExperimentConfig) -> list[str]:
        server, problems = config.server, []
        if (server.url is None) == (server.command is None):
            problems.append(
                "engine='openai' needs exactly one of server.url (a server that runs) and "
                "server.command (one the experiment starts, e.g. 'vllm serve {model} --port {port}')"
            )
        if server.command is not None:
            unknown = placeholders_in(server.command) - set(PLACEHOLDERS)
            if unknown:
                problems.append(
                    f"server.command={server.command!r} uses {', '.join(sorted(unknown))}; the "
                    f"placeholders are {', '.join('{' + name + '}' for name in PLACEHOLDERS)}"
                )
            if "port" not in placeholders_in(server.command):
                problems.append(
                    f"server.command={server.command!r} has no {{port}}; add it where the server "
                    "takes its port (e.g. --port {port}) so each started server gets a free one"
                )
        if config.batch_size != 1:
            problems.append(
                f"batch_size={config.batch_size} does not apply to engine='openai' (the server "
                "batches requests itself); set concurrency for the most requests in flight"
            )
        if config.concurrency is not None and config.concurrency > config.n_prompts:
            problems.append(
                f"concurrency={config.concurrency} exceeds n_prompts={config.n_prompts}: no more "
                "requests than that can be in flight; raise n_prompts or lower concurrency"
            )
        return problems

    def resolve_model(self, reference: str) -> ResolvedModel:
        """The model as a transformers checkpoint: its tokenizer counts and cuts prompts, and
        `{model}` in a server command is its directory."""
        return resolve_model(reference)

    def resolve_device(self, device: str) -> str:
        if device == "auto":
            from pytest_llem.hardware import nvml_devices

            session = nvml_devices.open_session()
            return "cuda:0" if session is not None and session.visible_devices() else "cpu"
        return "cuda:0" if device == "cuda" else device

    def device_problems(self, requested: str, device: str) -> list[str]:
        return []

    def init_device(self, device: str) -> None:
        """The server owns the device; nothing to create here."""

    def set_threads(self, num_threads: int) -> None:
        """The server's threads are its own (set them in server.command)."""

    def seed(self, seed: int) -> None:
        """Greedy requests; the arrival schedule is seeded in `prepare`."""

    def synchronize(self, device: str) -> None:
        """`generate` returns when every request has ended; nothing is queued on a device here."""

    def outside_process_tree(self, config: ExperimentConfig) -> bool:
        """True for a server at a URL: this session's CPU-time meters cannot see its work."""
        return config.server.url is not None

    def cache_key(self, spec: LoadSpec) -> tuple[str, ...]:
        server = spec.server
        assert server is not None
        # parametrised tests with the same command (or URL) share one server
        return (spec.engine, str(spec.model.path), spec.device, server.model_dump_json())

    def load(self, spec: LoadSpec) -> LoadedModel:
        server = spec.server
        assert server is not None
        started = None
        if server.command is not None:
            values = {"model": str(spec.model.path)}
            if "gguf" in placeholders_in(server.command):
                from pytest_llem.engines.llama_cpp_backend import LlamaCppBackend

                values["gguf"] = str(LlamaCppBackend().resolve_model(spec.model.reference).path)
            log_dir = spec.log_dir or Path.cwd()
            log_path = log_dir / f"server-{int(time.time() * 1000)}.log"
            cuda_visible = ",".join(str(index) for index in self.gpu_indices(spec.device))
            started = StartedServer.start(server.command, values, cuda_visible, log_path)
            try:
                started.wait_ready(server.ready_timeout_s)
            except BaseException:
                started.stop()
                raise
            url = started.url
        else:
            assert server.url is not None
            url = server.url.rstrip("/")
        try:  # a started server is stopped on every way out of here but success
            served_model = self._pick_model(server, url, _served_models(url))
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(spec.model.path))
            token_prompts = server.api == "completions" and _takes_token_ids(url, served_model)
        except BaseException:
            if started is not None:
                started.stop()
            raise
        connection = ServerConnection(url, served_model, server, started, token_prompts)
        settings: dict[str, Any] = {
            "url": url,
            "api": server.api,
            "served_model": served_model,
            "server_started": started is not None,
            "prompts_sent_as": "token ids" if token_prompts else "text",
        }
        if started is not None:
            settings["server_command"] = " ".join(started.argv)
            settings["server_log"] = str(started.log_path)
        eos = tokenizer.eos_token_id
        return LoadedModel(
            connection,
            tokenizer,
            spec.device,
            spec.dtype,
            (eos,) if isinstance(eos, int) else (),
            tokenizer.pad_token_id,
            settings,
        )

    @staticmethod
    def _pick_model(server: ServerConfig, url: str, available: list[str]) -> str:
        if server.served_model is not None:
            if server.served_model not in available:
                raise ServerError(
                    f"server.served_model={server.served_model!r} is not served at {url}; it serves "
                    f"{', '.join(available) or 'nothing'}: set server.served_model to one of them"
                )
            return server.served_model
        if not available:
            raise ServerError(f"the server at {url} lists no model in GET /v1/models; is it still loading?")
        return available[0]

    def release(self, loaded: LoadedModel) -> None:
        connection: ServerConnection = loaded.model
        connection.close()

    def parameter_count(self, loaded: LoadedModel) -> ParameterCount | None:
        """From the checkpoint's config.json (the served model's shapes, not its weights)."""
        import json

        from pytest_llem.engines.flops import count_from_hf_config

        try:
            config = json.loads((Path(loaded.tokenizer.name_or_path) / "config.json").read_text())
        except (OSError, ValueError):
            return None
        return count_from_hf_config(config)

    def prepare(
        self,
        loaded: LoadedModel,
        prompts: PromptSet,
        batch_size: int,
        max_input_tokens: int,
        load: LoadPattern | None = None,
    ) -> PreparedPrompts:
        """Request bodies (completions: the prompt's token ids where the server takes them, so
        its length is exact, else its text; chat: its text as one user message), and the seeded
        arrival schedule."""
        from pytest_llem.engines.served.arrivals import arrival_offsets

        assert load is not None
        connection: ServerConnection = loaded.model
        ids = prompt_token_ids(loaded.tokenizer, prompts, max_input_tokens)
        chat = connection.server.api == "chat"
        stop_tokens = sorted({*loaded.eos_token_ids, *getattr(loaded.tokenizer, "all_special_ids", [])})
        payloads = []
        for prompt in ids:
            body: dict[str, Any] = {
                "model": connection.served_model,
                "max_tokens": load.max_new_tokens,
                "temperature": 0.0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            if load.fixed_length:
                # ignore_eos: vLLM's, SGLang's and llama.cpp's own. logit_bias is the OpenAI
                # API's: -100 on every special token (EOS and any other end-of-generation token,
                # <|endoftext|> beside <|im_end|>), which llama-cpp-python's server honours where
                # it ignores ignore_eos. Not min_tokens: llama-cpp-python 0.3 then drops the
                # logit_bias and answers an empty "stop"
                body["ignore_eos"] = True
                if stop_tokens:
                    body["logit_bias"] = {str(token): -100 for token in stop_tokens}
            if chat:
                body["messages"] = [{"role": "user", "content": loaded.tokenizer.decode(prompt)}]
            elif connection.token_prompts:
                body["prompt"] = prompt
            else:
                body["prompt"] = loaded.tokenizer.decode(prompt)
            payloads.append(body)
        offsets = arrival_offsets(len(payloads), load.request_rate, load.burstiness, load.seed)
        lengths = [len(prompt) for prompt in ids]
        batch = ServedBatch(payloads, offsets, load_concurrency(load.concurrency, len(payloads)), lengths)
        return PreparedPrompts([batch], lengths)

    def generate(
        self,
        loaded: LoadedModel,
        batch: ServedBatch,
        max_new_tokens: int,
        fixed_length: bool,
        observer: ProgressObserver | None = None,
    ) -> list[RequestOutput]:
        """One whole load, on this thread's event loop; the server's `/metrics` is scraped
        meanwhile. A started server that is gone afterwards is a `ServerError`."""
        from pytest_llem.engines.served.prometheus import mean_between, scrape_until
        from pytest_llem.engines.served.stream import request_outputs, run_load, steady_span

        connection: ServerConnection = loaded.model
        session = connection.session(batch.concurrency)
        scraper = connection.scraper()
        chat = connection.server.api == "chat"
        endpoint = f"{connection.url}/v1/{'chat/completions' if chat else 'completions'}"
        scrapes: list[Scrape] = []

        async def load_and_scrape() -> tuple[Any, str | None]:
            done = asyncio.Event()
            scraping = (
                asyncio.ensure_future(scrape_until(scraper, f"{connection.url}/metrics", done, scrapes))
                if connection.server.metrics
                else None
            )
            try:
                run = await run_load(
                    session,
                    endpoint,
                    batch.payloads,
                    batch.offsets,
                    batch.concurrency,
                    chat,
                    connection.server.request_timeout_s,
                    observer,
                )
            finally:
                done.set()
            note = (await scraping) if scraping is not None else "server.metrics is off"
            return run, note

        started_s = time.perf_counter()
        run, note = connection.loop.run_until_complete(load_and_scrape())
        if connection.started is not None:
            problem = connection.started.exit_problem(" while the load ran")
            if problem is not None:
                raise ServerError(f"{problem}; the next experiment starts it afresh")
        errors = [request.error for request in run.requests if request.error is not None]
        if errors and len(errors) == len(run.requests):
            where = f"; the server's log: {connection.started.log_path}" if connection.started else ""
            raise ServerError(
                f"every one of the {len(errors)} requests to {endpoint} failed, the first with {errors[0]}{where}"
            )
        steady = steady_span(run, batch.concurrency)
        connection.calls.append(
            ServedCall(
                wall_s=run.ended_s - started_s,
                client_cpu_s=run.client_cpu_s,
                scrapes=len(scrapes),
                mean_running=mean_between(scrapes, run.started_s, run.ended_s, "running"),
                mean_kv_cache_usage=mean_between(scrapes, run.started_s, run.ended_s, "kv_cache_usage"),
                steady_mean_running=mean_between(scrapes, *steady, "running") if steady else None,
                metrics_note=note if not scrapes else None,
            )
        )
        tokenizer = loaded.tokenizer
        return request_outputs(
            run, batch.input_tokens, lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
        )

    def alive(self, loaded: LoadedModel) -> bool:
        """False once a started server has exited: the session loads (starts) it afresh."""
        connection: ServerConnection = loaded.model
        return connection.started is None or connection.started.exit_problem() is None

    def take_calls(self, loaded: LoadedModel) -> list[ServedCall]:
        """The calls since the last take (the lifecycle takes them after each window)."""
        connection: ServerConnection = loaded.model
        calls, connection.calls = connection.calls, []
        return calls
