"""The blocking client: the same methods as grainchain.Sandbox, without `await`.

from grainchain.sync import Sandbox

with Sandbox() as sandbox:
    print(sandbox.execute("echo hi").stdout)
"""

from grainchain._sync.process import ProcessHandle
from grainchain._sync.sandbox import Sandbox

__all__ = ["ProcessHandle", "Sandbox"]
