"""Config as code: TOML files validated into frozen settings."""

from jvmail.config.loader import HUB_FILE, PARTNERS_DIR, Hub, load_config
from jvmail.config.models import (
    HubSettings,
    ListConfig,
    PartnerConfig,
    PromotionConfig,
    ProviderAccount,
    SchedulerSettings,
    ValueMetric,
)

__all__ = [
    "HUB_FILE",
    "PARTNERS_DIR",
    "Hub",
    "HubSettings",
    "ListConfig",
    "PartnerConfig",
    "PromotionConfig",
    "ProviderAccount",
    "SchedulerSettings",
    "ValueMetric",
    "load_config",
]
