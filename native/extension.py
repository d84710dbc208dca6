"""Load one compiled extension of native/build/ once, and say once why it cannot be used.

Each loader module (``softroce``, ``eventenc``) makes one ``Extension`` and keeps its own
names (``load``, ``available``, its exception class): a missing build, an environment
switch and a module that does not load each give a message that says what to do.
"""

from __future__ import annotations

import importlib.util
import os
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))


def build_path(name: str) -> str:
    """Where native/build.sh puts the extension ``name`` for the running Python."""
    return os.path.join(HERE, "build", name + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))


class Extension:
    def __init__(self, name: str, what: str, build_hint: str, error: type[ImportError], path: str | None = None,
                 disable_env: str | None = None) -> None:  # fmt: skip
        self.name, self.what, self.build_hint, self.error = name, what, build_hint, error
        self.path = path or build_path(name)
        self.disable_env = disable_env
        self.module = None
        self.why = ""

    def load(self):
        """The module; ``error`` (once found, the same message every time) when it cannot be used."""
        if self.module is not None:
            return self.module
        if self.why:
            raise self.error(self.why)
        if self.disable_env and os.environ.get(self.disable_env, "") not in ("", "0"):
            self.why = f"{self.what} is switched off ({self.disable_env} is set)"
            raise self.error(self.why)
        if not os.path.exists(self.path):
            self.why = f"{self.what} is not built ({os.path.relpath(self.path, os.path.dirname(HERE))} is missing): {self.build_hint}"
            raise self.error(self.why)
        try:
            spec = importlib.util.spec_from_file_location(f"native.{self.name}", self.path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        except (ImportError, OSError) as e:
            self.why = f"{self.what} does not load ({e}): rebuild it; {self.build_hint}"
            raise self.error(self.why) from None
        self.module = mod
        return mod

    def available(self) -> tuple[bool, str]:
        try:
            self.load()
            return True, ""
        except self.error as e:
            return False, str(e)
