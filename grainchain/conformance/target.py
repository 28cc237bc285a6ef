"""What the suite runs against: a provider by name, the SandboxConfig of its sandboxes, the test budget."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, settings

from grainchain._generated.features import Feature
from grainchain._provider_info import ProviderInfo
from grainchain.models import SandboxConfig, SupportLevel
from grainchain.sync import Sandbox


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

    def __post_init__(self) -> None:
        # what the suite holds the provider to: its declaration, narrowed by what the backend lacks
        with self.sandbox() as sandbox:
            self.capabilities = dict(sandbox.capabilities)

    @property
    def name(self) -> str:
        return self.provider.name

    @property
    def budget(self) -> Budget:
        return BUDGETS["thorough" if self.thorough else "ci"]

    def supports(self, feature: Feature) -> bool:
        return self.capabilities.get(feature, SupportLevel.unsupported) is not SupportLevel.unsupported

    @contextmanager
    def sandbox(self, **overrides: Any) -> Iterator[Sandbox]:
        """A started sandbox of the provider (config fields overridden by `overrides`), closed afterwards."""
        config = SandboxConfig.model_validate({**self.config.model_dump(), **overrides})
        with Sandbox(self.name, config) as sandbox:
            yield sandbox

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
            max_examples=budget.max_examples,
            stateful_step_count=budget.stateful_step_count,
        )
