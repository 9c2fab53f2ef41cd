"""`agentkd serve`: the Distiller behind OpenAI- and Anthropic-compatible HTTP endpoints, so
any agent (any SDK, any language) reaches the cascade by changing its base URL.

Modules: `config` (routes, upstreams, keys; the TOML file), `service` (one worker's
`Gateway`: routing, episodes, logging), `episodes`, `auth`, `metrics`, `errors`, the API
shapes (`shapes`, `openai_chat`, `openai_responses`, `anthropic_messages`), `upstream`
(streamed provider calls), `app` (the HTTP endpoints) and `server` (uvicorn, workers).
"""

from agentkd.gateway.app import create_app
from agentkd.gateway.config import GatewayConfig, GatewayKey, Route, load_config
from agentkd.gateway.server import running, serve
from agentkd.gateway.service import Gateway

__all__ = ["Gateway", "GatewayConfig", "GatewayKey", "Route", "create_app", "load_config",
           "running", "serve"]
