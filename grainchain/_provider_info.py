"""What grainchain knows about a provider before importing any of its code."""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from grainchain._generated.features import Feature
from grainchain._generated.models import SupportLevel
from grainchain._provider_config import OpenProviderConfig, ProviderConfig
from grainchain.errors import ProviderUnavailableError


@dataclass(frozen=True)
class ProviderInfo:
    """A provider's declaration: its features and where its adapters live ("module:Class" paths).

    Third-party providers publish one of these under the `grainchain.providers` entry-point group.
    """

    name: str
    features: Mapping[Feature, SupportLevel]
    async_adapter: str | None = None
    sync_adapter: str | None = None
    # "module:Class" of its provider_config model (a grainchain.ProviderConfig); None: any keys are passed on
    config_model: str | None = None
    summary: str = ""
    status: str = "available"  # "planned": declared in the spec, no adapter yet
    extra: str | None = None  # pip extra that installs the provider's SDK
    sdk_module: str | None = None  # importable when the SDK is installed
    credentials_env: tuple[str, ...] = field(default_factory=tuple)
    # conformance test name -> why it cannot apply to this provider; reported, never skipped silently
    conformance_exclusions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Accept plain strings from third parties: {"exec": "native"}; unknown names fail here, loudly.
        object.__setattr__(
            self, "features", {Feature(k): SupportLevel(v) for k, v in dict(self.features).items()}
        )
        for test, reason in self.conformance_exclusions.items():
            if not str(reason).strip():
                raise ValueError(f"provider {self.name!r}: the exclusion of {test!r} needs a reason")

    def level(self, feature: Feature) -> SupportLevel:
        return self.features.get(feature, SupportLevel.unsupported)

    def supports(self, feature: Feature) -> bool:
        return self.level(feature) is not SupportLevel.unsupported

    @property
    def install_hint(self) -> str:
        return f"pip install 'grainchain[{self.extra}]'" if self.extra else "pip install grainchain"

    def is_installed(self) -> bool:
        """The SDK (if any) is importable; adapters are not imported to find out."""
        return self.sdk_module is None or importlib.util.find_spec(self.sdk_module) is not None

    def missing_credentials(self) -> list[str]:
        return [name for name in self.credentials_env if not os.environ.get(name)]

    def load_config_model(self) -> type[ProviderConfig]:
        """The provider's provider_config model (imports only its config module, never its SDK)."""
        if self.config_model is None:
            return OpenProviderConfig
        model = self._import(self.config_model, "provider_config model")
        if not (isinstance(model, type) and issubclass(model, ProviderConfig)):
            raise ProviderUnavailableError(
                f"provider {self.name!r}: {self.config_model!r} is not a grainchain ProviderConfig",
                provider=self.name,
            )
        return model

    def _import(self, path: str, what: str) -> Any:
        module_name, _, attr = path.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ProviderUnavailableError(
                f"provider {self.name!r}: cannot import its {what} {path!r}: {exc}", provider=self.name
            ) from exc

    def load_adapter(self, flavour: str) -> Any:
        """Import the "async" or "sync" adapter class; a missing SDK or adapter is ProviderUnavailableError."""
        path = self.sync_adapter if flavour == "sync" else self.async_adapter
        if path is None:
            reason = (
                "is planned but has no adapter yet"
                if self.status == "planned"
                else f"has no {flavour} adapter"
            )
            raise ProviderUnavailableError(f"provider {self.name!r} {reason}", provider=self.name)
        if not self.is_installed():
            raise ProviderUnavailableError(
                f"provider {self.name!r} needs the {self.sdk_module!r} package: {self.install_hint}",
                provider=self.name,
            )
        return self._import(path, "adapter")
