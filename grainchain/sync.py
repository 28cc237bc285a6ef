"""The blocking client: the same methods as grainchain.Sandbox, without `await`.

from grainchain.sync import Sandbox

with Sandbox() as sandbox:
    print(sandbox.execute("echo hi").stdout)
"""

from grainchain._generated._sync.sandbox import Sandbox
from grainchain._sync.process import ProcessHandle

__all__ = ["ProcessHandle", "Sandbox"]
