"""The Plugboard broker: a sans-IO core driven by a ZeroMQ socket loop."""

from .core import BrokerCore, CoreConfig
from .server import BrokerServer, ServerConfig

__all__ = ["BrokerCore", "BrokerServer", "CoreConfig", "ServerConfig"]
