"""llama-cpp-python's real OpenAI server, made to die at the Nth completion request: the
fault a served experiment must survive (a server that dies mid-window).

    python dying_server.py N --model GGUF --port PORT [llama_cpp.server options]

The server is llama_cpp.server's own app; one ASGI middleware counts POST /v1/completions
and, at request N, kills the process outright (SIGKILL: no clean shutdown, as the kernel's
OOM killer would).
"""

import os
import signal
import sys

import uvicorn
from fastapi import FastAPI
from llama_cpp.server.app import create_app
from llama_cpp.server.settings import ModelSettings, ServerSettings
from starlette.middleware.base import RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response


def main() -> None:
    die_at = int(sys.argv[1])
    args = dict(zip(sys.argv[2::2], sys.argv[3::2], strict=True))
    model = ModelSettings(model=args["--model"], n_ctx=512, n_threads=1, verbose=False)
    server = ServerSettings(host="127.0.0.1", port=int(args["--port"]), interrupt_requests=False)
    app: FastAPI = create_app(server_settings=server, model_settings=[model])
    seen = 0

    @app.middleware("http")
    async def die_at_request(request: Request, call_next: RequestResponseEndpoint) -> Response:
        nonlocal seen
        if request.method == "POST" and request.url.path == "/v1/completions":
            seen += 1
            if seen >= die_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return await call_next(request)

    uvicorn.run(app, host=server.host, port=server.port, log_level="warning")


if __name__ == "__main__":
    main()
