"""What the suite runs against: a provider by name, the SandboxConfig of its sandboxes, the test budget, and
the client (sync or async) the current test drives it with."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, settings

from grainchain.adapters import Feature, ProviderInfo
from grainchain.models import SandboxConfig, SandboxInfo, SupportLevel
from grainchain_conformance.clients import Blocking, call, sandbox_class


@dataclass(frozen=True)
class Budget:
    max_examples: int  # state machine runs (each on a fresh sandbox)
    stateful_step_count: int  # operations per run

    @property
    def hang_guard(self) -> float:
        """Seconds after which the state machine counts as hung (pytest-timeout, when installed): generous
        per step, since one step of a remote or checkpointing provider can take seconds, plus shrinking."""
        return 2.0 * self.max_examples * self.stateful_step_count + 300


# Fixed budgets: the CI one keeps the suite against local well under two minutes.
BUDGETS = {"ci": Budget(15, 30), "thorough": Budget(200, 60)}


@dataclass
class ConformanceTarget:
    provider: ProviderInfo
    config: SandboxConfig
    thorough: bool = False
    capabilities: dict[Feature, SupportLevel] = field(default_factory=dict)
    missing: dict[Feature, str] = field(default_factory=dict)  # declared, lacking here: why
    client: str = "sync"  # which client the sandboxes are made with: "sync" or "async"
    clients: int = 1  # how many clients the run drives (the state machine's budget is shared among them)

    def __post_init__(self) -> None:
        if not self.capabilities:
            # what the suite holds the provider to: its declaration, narrowed by what the backend lacks
            with self.sandbox() as sandbox:
                self.capabilities = dict(sandbox.capabilities)
                self.missing = dict(sandbox.missing_features)

    @property
    def name(self) -> str:
        return self.provider.name

    @property
    def budget(self) -> Budget:
        return BUDGETS["thorough" if self.thorough else "ci"]

    def supports(self, feature: Feature) -> bool:
        return self.capabilities.get(feature, SupportLevel.unsupported) is not SupportLevel.unsupported

    def sandbox_config(self, **overrides: Any) -> SandboxConfig:
        return SandboxConfig.model_validate({**self.config.model_dump(), **overrides})

    def open(self, **overrides: Any) -> Any:
        """A started sandbox of the provider (config fields overridden by `overrides`); the caller closes it.
        Typed Any: it is a `grainchain.sync.Sandbox`, or the async client behind the same blocking calls."""
        inner = sandbox_class(self.client)(self.name, self.sandbox_config(**overrides))
        sandbox = Blocking(inner, f"{self.client} sandbox")
        sandbox.start()
        return sandbox

    @contextmanager
    def sandbox(self, **overrides: Any) -> Iterator[Any]:
        """A started sandbox (see open()), closed (or detached, with keep_alive) when the block ends."""
        with self.open(**overrides) as sandbox:
            yield sandbox

    def connect(self, sandbox_id: str, **overrides: Any) -> Any:
        """Sandbox.connect through the current client (config: the suite's, with `overrides`)."""
        cls = sandbox_class(self.client)
        config = self.sandbox_config(**overrides)
        inner = call(
            self.client, f"connect({sandbox_id!r})", lambda: cls.connect(sandbox_id, self.name, config)
        )
        return Blocking(inner, f"{self.client} sandbox (connected)")

    def list_sandboxes(self) -> list[SandboxInfo]:
        cls = sandbox_class(self.client)
        found: list[SandboxInfo] = call(
            self.client, "list_sandboxes()", lambda: cls.list_sandboxes(self.name)
        )
        return found

    def hypothesis_settings(self) -> settings:
        budget = self.budget
        return settings(
            deadline=None,  # sandboxes have real latency; budgets come from max_examples and step counts
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
            print_blob=True,
            database=None,
            # Shrinking replays the machine hundreds of times, each on a fresh sandbox: in CI shrink only the
            # first failure found (one lie often fails several rules); the thorough budget reports them all.
            report_multiple_bugs=self.thorough,
            max_examples=-(-budget.max_examples // self.clients),  # (rounded up)
            stateful_step_count=budget.stateful_step_count,
        )
