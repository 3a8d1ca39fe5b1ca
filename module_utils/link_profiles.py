"""Cloud link profiles (config/link_profiles.yaml): parsing, validation, the docs table.

A profile is one cloud link between a source and a destination: its round-trip time and
jitter, what the pair may send each way (`rate_mbit`) and what one flow may send
(`per_flow_mbit`). Every figure names its source (a page and what it says) or is marked an
assumption with its reasoning; a profile without either for a figure is refused.

The preflight reads the profiles' names (the values of `lab_link_profile`); the lab_link
role hands the chosen profile, as a plain dict, to library/lab_link.py. Pure functions over
plain data; PyYAML is imported only where the file is read (controller side).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The value of lab_link_profile that shapes nothing.
NO_PROFILE = "none"
FIGURES = ("rtt_ms", "jitter_ms", "rate_mbit", "per_flow_mbit")
# Units and what each figure means (docs table, error messages).
FIGURE_UNITS = {"rtt_ms": "ms", "jitter_ms": "ms", "rate_mbit": "Mbit/s", "per_flow_mbit": "Mbit/s"}
# Plausible limits: a figure outside them is a typo, not a cloud.
LIMITS: dict[str, tuple[float, float]] = {
    "rtt_ms": (0.0, 2000.0),
    "jitter_ms": (0.0, 500.0),
    "rate_mbit": (1.0, 400_000.0),
    "per_flow_mbit": (1.0, 400_000.0),
}
PROFILES_FILE = Path(__file__).resolve().parent.parent / "config" / "link_profiles.yaml"


class ProfileError(ValueError):
    """A link profiles file or profile that cannot be used."""


@dataclass(frozen=True)
class LinkProfile:
    name: str
    description: str
    rtt_ms: float
    jitter_ms: float
    rate_mbit: float
    per_flow_mbit: float
    # figure -> list of {url, says} or {assumption}
    sources: dict[str, Any] = field(default_factory=dict)

    @property
    def one_way_delay_ms(self) -> float:
        """Each direction carries half the round trip."""
        return self.rtt_ms / 2.0

    @property
    def one_way_jitter_ms(self) -> float:
        """The standard deviation of each direction's delay: two independent directions with
        sigma each give a round trip of sigma * sqrt(2), so sigma = jitter / sqrt(2)."""
        return self.jitter_ms / 2.0**0.5

    @property
    def assumptions(self) -> list[str]:
        """The figures that rest on an assumption rather than a source."""
        return [name for name in FIGURES if _is_assumption(self.sources.get(name))]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            **{name: getattr(self, name) for name in FIGURES},
            "assumptions": self.assumptions,
            "sources": self.sources,
        }


def _is_assumption(source: Any) -> bool:
    return isinstance(source, Mapping) and bool(source.get("assumption"))


def _source_errors(where: str, source: Any) -> list[str]:
    """A figure's source: {assumption: why} or a non-empty list of {url, says}."""
    if _is_assumption(source):
        return []
    if isinstance(source, Mapping):
        source = [source]
    if not isinstance(source, list) or not source:
        return [
            f"{where}: no source - give a list of {{url, says}} or {{assumption: why}} "
            "(a figure without a source is an assumption and must say so)"
        ]
    errors = []
    for index, entry in enumerate(source):
        if not isinstance(entry, Mapping):
            errors.append(f"{where}[{index}]: expected {{url, says}}, got {entry!r}")
            continue
        url, says = str(entry.get("url") or ""), str(entry.get("says") or "")
        if not url.startswith(("http://", "https://")):
            errors.append(f"{where}[{index}]: url {url!r} is not an http(s) address")
        if not says.strip():
            errors.append(f"{where}[{index}]: says is empty (what does the page state?)")
    return errors


def parse_profile(name: str, data: Any) -> tuple[LinkProfile | None, list[str]]:
    """One profile from its mapping; (None, errors) when it cannot be used."""
    where = f"profile {name}"
    if not isinstance(data, Mapping):
        return None, [f"{where}: expected a mapping, got {data!r}"]
    errors: list[str] = []
    unknown = sorted(set(data) - {*FIGURES, "description", "sources"})
    if unknown:
        errors.append(
            f"{where}: unknown keys {', '.join(unknown)} (valid: {', '.join(FIGURES)}, description, sources)"
        )
    figures: dict[str, float] = {}
    for figure in FIGURES:
        value = data.get(figure)
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append(
                f"{where}: {figure} must be a number ({FIGURE_UNITS[figure]}), got {value!r}"
            )
            continue
        low, high = LIMITS[figure]
        if not low <= value <= high:
            errors.append(
                f"{where}: {figure}={value} is outside {low:g}-{high:g} {FIGURE_UNITS[figure]}"
            )
            continue
        figures[figure] = float(value)
    sources = data.get("sources")
    if not isinstance(sources, Mapping):
        errors.append(f"{where}: sources must map each figure to its sources")
        sources = {}
    for figure in FIGURES:
        errors.extend(_source_errors(f"{where}: sources.{figure}", sources.get(figure)))
    if errors:
        return None, errors
    profile = LinkProfile(
        name=name,
        description=" ".join(str(data.get("description") or "").split()),
        sources={figure: sources[figure] for figure in FIGURES},
        **figures,
    )
    return profile, []


def parse_profiles(document: Any) -> dict[str, LinkProfile]:
    """Every profile of a loaded link profiles file; ProfileError names every problem."""
    if not isinstance(document, Mapping) or not isinstance(document.get("profiles"), Mapping):
        raise ProfileError("a link profiles file needs a mapping `profiles:` of name -> profile")
    profiles: dict[str, LinkProfile] = {}
    errors: list[str] = []
    for name, data in document["profiles"].items():
        if str(name) == NO_PROFILE:
            errors.append(f"profile name {NO_PROFILE!r} is reserved (it means: no shaping)")
            continue
        profile, problems = parse_profile(str(name), data)
        errors.extend(problems)
        if profile is not None:
            profiles[profile.name] = profile
    if errors:
        raise ProfileError("; ".join(errors))
    return profiles


def load_profiles(path: str | Path = PROFILES_FILE) -> dict[str, LinkProfile]:
    """The profiles of config/link_profiles.yaml (controller side)."""
    import yaml

    return parse_profiles(yaml.safe_load(Path(path).read_text()))


def profile_names(path: str | Path = PROFILES_FILE) -> tuple[str, ...]:
    """`none` and the profiles' names: the values lab_link_profile may take."""
    return (NO_PROFILE, *sorted(load_profiles(path)))


def resolve(name: str, profiles: Mapping[str, LinkProfile]) -> LinkProfile:
    """The profile called `name`; ProfileError naming the known ones otherwise."""
    if name in profiles:
        return profiles[name]
    raise ProfileError(
        f"lab_link_profile={name!r} is not a known link profile; known: "
        f"{', '.join((NO_PROFILE, *sorted(profiles)))} (config/link_profiles.yaml)"
    )


def profile_from_dict(data: Mapping[str, Any]) -> LinkProfile:
    """A profile handed over as a dict (LinkProfile.as_dict), validated again."""
    name = str(data.get("name") or "")
    if not name:
        raise ProfileError("the profile has no name")
    body = {key: data[key] for key in (*FIGURES, "description", "sources") if key in data}
    profile, errors = parse_profile(name, body)
    if profile is None:
        raise ProfileError("; ".join(errors))
    return profile


def _figure_cell(profile: LinkProfile, figure: str) -> str:
    value = getattr(profile, figure)
    text = f"{value:g}"
    return f"{text} (assumption)" if figure in profile.assumptions else text


def profiles_markdown(profiles: Mapping[str, LinkProfile]) -> str:
    """The docs table of the profiles (docs/links.md), figures marked when assumed."""
    lines = [
        "| profile | RTT ms | jitter ms | rate Mbit/s | per flow Mbit/s | what |",
        "|---|---|---|---|---|---|",
    ]
    for profile in profiles.values():
        cells = [
            f"`{profile.name}`",
            *(_figure_cell(profile, f) for f in FIGURES),
            profile.description,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sources_markdown(profiles: Mapping[str, LinkProfile]) -> str:
    """Each profile's figures with their sources or assumptions (docs/links.md)."""
    lines: list[str] = []
    for profile in profiles.values():
        lines.append(f"- `{profile.name}`")
        for figure in FIGURES:
            source = profile.sources[figure]
            value = f"{getattr(profile, figure):g} {FIGURE_UNITS[figure]}"
            if _is_assumption(source):
                lines.append(
                    f"  - {figure} {value}: **assumption** - {' '.join(str(source['assumption']).split())}"
                )
                continue
            for entry in source if isinstance(source, list) else [source]:
                lines.append(f"  - {figure} {value}: <{entry['url']}> - {entry['says']}")
    return "\n".join(lines)
