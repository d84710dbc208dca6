"""Helpers for the TUI tests: the app on the synthetic source, on a clock the test moves."""

from __future__ import annotations

import asyncio

from smctop.app import SmctopApp
from smctop.sources import SyntheticSource
from smctop.synthetic import SyntheticStack

SIZE = (180, 40)


def make_app(conns: int = 3, **kw) -> tuple[SmctopApp, SyntheticSource]:
    source = SyntheticSource(SyntheticStack(conns, **kw))
    app = SmctopApp(source, poll_interval=3600)  # no timer in between: the test moves the clock and syncs
    return app, source


async def advance(app: SmctopApp, pilot, source: SyntheticSource, seconds: float = 1.0) -> None:
    source.advance(seconds)
    app.sync(force=True)
    await pilot.pause()


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))
