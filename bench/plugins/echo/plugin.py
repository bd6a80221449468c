"""echo: returns what it is given, so make bench can time a call through the broker."""

from typing import Any

from plugboard.sdk import Plugin

plugin = Plugin()


@plugin.method("echo")
async def echo(p: Plugin, value: Any) -> Any:
    return value


if __name__ == "__main__":
    plugin.run()
