"""When to migrate: the preflight's rules for the `trigger` settings, and the conditions of
`trigger=ready` (how long the workload runs, how many progress lines, how much memory).

- `trigger=ready` (the default): the checkpoint starts as soon as the workload is ready and
  every condition holds: `migrate_after_s` seconds since it wrote `checkpoint_ready`,
  `migrate_after_lines` lines in `progress.log`, `migrate_at_rss_mb` MB of anonymous memory
  (RssAnon of its process tree). 0 turns a condition off; all 0 is the migration at once.
- `trigger=notice`: the migration starts when the provider's interruption notice arrives
  (module_utils/spot_notice.py); the provider comes from `notice_provider` or, with
  `auto`, from the inventory's groups (aws / aws_* -> aws, gcp / gcp_* -> gcp,
  azure / azure_* -> azure), the endpoint from `notice_endpoint` (`auto`: the provider's
  own address - which a lab inventory may never use).

The preflight's part, on the control node (module_utils/ on sys.path, as for
experiment_plan.py); the conditions themselves are evaluated on the source by
library/workload_conditions.py with module_utils/trigger_conditions.py.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from spot_notice import ENDPOINTS, PROVIDERS, REAL_METADATA_HOSTS
from trigger_conditions import CONDITIONS

TRIGGERS = ("ready", "notice")
NOTICE_PROVIDERS = ("auto", *PROVIDERS)
# Inventory groups whose hosts are a provider's (Terraform's inventories put theirs in `aws`).
PROVIDER_GROUPS = {"aws": ("aws",), "gcp": ("gcp", "gce"), "azure": ("azure",)}
# The inventories of the local labs: never the real metadata address there.
LAB_GROUPS = ("lab", "lab_guest")


def inventory_provider(groups: Mapping[str, Sequence[str]]) -> tuple[str | None, str]:
    """The provider the inventory's groups name, or None with the reason."""
    found = sorted(
        {
            provider
            for name, hosts in groups.items()
            if hosts
            for provider, prefixes in PROVIDER_GROUPS.items()
            if any(name == prefix or name.startswith(prefix + "_") for prefix in prefixes)
        }
    )
    if len(found) == 1:
        return found[0], f"the inventory's {found[0]} group"
    if not found:
        return None, (
            "notice_provider=auto: the inventory names no cloud (no host in a group aws, "
            "aws_*, gcp, gcp_*, azure or azure_*); set notice_provider=" + "|".join(PROVIDERS)
        )
    return None, (
        f"notice_provider=auto: the inventory has hosts of several clouds ({', '.join(found)}); "
        "set notice_provider"
    )


def endpoint_errors(endpoint: str) -> list[str]:
    """What is wrong with a notice_endpoint URL."""
    parsed = urllib.parse.urlsplit(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return [
            f"notice_endpoint={endpoint!r} is not an http:// URL of the metadata service "
            "(e.g. http://10.77.0.1:18169 for scripts/fake_metadata.py in the lab, or auto)"
        ]
    try:
        parsed.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return [f"notice_endpoint={endpoint!r} has an invalid port"]
    if parsed.query or parsed.fragment:
        return [f"notice_endpoint={endpoint!r}: give the service's base URL, without ? or #"]
    return []


def plan_trigger(
    settings: dict[str, Any],
    groups: Mapping[str, Sequence[str]],
    workload_params: Mapping[str, Any] | None = None,
) -> list[str]:
    """The trigger settings' errors; resolves notice_provider=auto and notice_endpoint=auto
    in `settings` (which then record the provider and address really used)."""
    errors: list[str] = []
    trigger = settings.get("trigger")
    if trigger not in TRIGGERS:
        return errors  # the setting's own check names the valid values
    conditions = {name: settings.get(name) or 0 for name in CONDITIONS}
    if trigger == "ready":
        max_memory = (workload_params or {}).get("max_memory")
        if (
            conditions["migrate_at_rss_mb"]
            and max_memory
            and conditions["migrate_at_rss_mb"] > max_memory
        ):
            errors.append(
                f"migrate_at_rss_mb={conditions['migrate_at_rss_mb']} MB would never hold: the "
                f"workload stops growing at max_memory={max_memory} MB"
            )
        return errors
    given = [f"{name}={value}" for name, value in conditions.items() if value]
    if given:
        errors.append(
            f"{', '.join(given)} applies to trigger=ready; with trigger=notice the notice "
            "decides when to migrate (set them to 0)"
        )
    provider = settings.get("notice_provider")
    if provider == "auto":
        provider, reason = inventory_provider(groups)
        if provider is None:
            errors.append(reason)
            return errors
        settings["notice_provider"] = provider
    endpoint = str(settings.get("notice_endpoint") or "auto")
    if endpoint == "auto" and provider in ENDPOINTS:
        endpoint = ENDPOINTS[provider]
        settings["notice_endpoint"] = endpoint
    problems = endpoint_errors(endpoint)
    errors.extend(problems)
    host = urllib.parse.urlsplit(endpoint).hostname or ""
    lab = [name for name in LAB_GROUPS if groups.get(name)]
    if not problems and lab and host.strip("[]") in REAL_METADATA_HOSTS:
        errors.append(
            f"notice_endpoint={endpoint} is the real {provider} metadata service, which a lab "
            f"inventory ({lab[0]}) must never contact: point it at the fake "
            "(scripts/fake_metadata.py serve --provider "
            f"{provider}; group_vars/{lab[0]}.yml sets its address)"
        )
    return errors
