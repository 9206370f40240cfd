"""The milestone file: one declarative definition shared by discovery, training and serving.

``milestones.yaml`` is the contract between people and the model: discovery writes it, people
edit it, the feature pipeline reads it and explanations speak its labels. Like a Feast feature
repo, it is data, not code, so both the batch and the online path read the very same object.

Example
-------
>>> spec = MilestoneSpec.model_validate({
...     "milestones": [{"name": "invited", "category": "collaboration",
...                     "label": "invited a teammate", "event": "teammate_invited"}]})
>>> spec.milestones[0].events
['teammate_invited']
>>> spec.settings.horizon_days
30
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CATEGORIES = ("activation", "adoption", "collaboration", "expansion")
Category = Literal["activation", "adoption", "collaboration", "expansion"]
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class SpecError(ValueError):
    """A milestone file that cannot be used; the message names the offending entry."""


def _identifier(v: str) -> str:
    # Names become feature column names (ms__<name>__reached), so they must be identifiers.
    if not _NAME.match(v):
        raise ValueError("must be lower_snake_case (letters, digits, underscores)")
    return v


Identifier = Annotated[str, AfterValidator(_identifier)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CutoffSchedule(_Strict):
    """When snapshots are taken.

    Either an explicit list of ``dates`` or a regular schedule. Unset ends are filled from the
    data: ``end`` defaults to the newest event minus the horizon (so every label is observable),
    ``start`` to ``count`` steps before ``end`` but never before the first event plus one step.

    The default, weekly and at most 104 cutoffs, covers the whole history of up to two years:
    the time split holds out the newest 40 % and a horizon-long gap, so a short schedule
    (formerly 12) left only ~3 training cutoffs. Measured on the synthetic world
    (docs/performance.md, "Training"), the whole span learns the planted drivers more reliably.
    """

    dates: list[dt.datetime] | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    every_days: int = Field(7, ge=1)
    count: int = Field(104, ge=1)

    def resolve(self, first_event: dt.datetime, last_event: dt.datetime, horizon_days: int,
                require_full_horizon: bool = True) -> list[pd.Timestamp]:
        """Return the concrete cutoffs for data spanning ``first_event``..``last_event``."""
        if self.dates:
            return sorted(pd.Timestamp(d).tz_localize(None) if pd.Timestamp(d).tz else pd.Timestamp(d)
                          for d in self.dates)
        end = pd.Timestamp(self.end) if self.end else pd.Timestamp(last_event).normalize()
        if self.end is None and require_full_horizon:
            end = end - pd.Timedelta(days=horizon_days)
        step = pd.Timedelta(days=self.every_days)
        start = pd.Timestamp(self.start) if self.start else end - step * (self.count - 1)
        start = max(start, pd.Timestamp(first_event).normalize() + step)
        out = []
        t = end
        while t >= start:
            out.append(t)
            t -= step
        return sorted(out)


class Settings(_Strict):
    """Global settings of the milestone file."""

    half_life_days: float = Field(14.0, gt=0, description="half-life of exponential time decay")
    horizon_days: int = Field(30, ge=1, description="a snapshot's label: converted in (T, T+horizon]")
    cutoffs: CutoffSchedule = Field(default_factory=CutoffSchedule)
    #: Raw activity families (baselines only): family name -> event names.
    activity_events: dict[str, list[str]] = Field(
        default_factory=lambda: {"logins": ["login"], "page_views": ["page_view"],
                                 "api_calls": ["api_call"]})


class _Rule(_Strict):
    """What milestones and warning signs share: a rule over named events (fields are declared
    by each, so a milestone file lists them in its own order)."""

    @field_validator("event", check_fields=False)
    @classmethod
    def _event_not_empty(cls, v):
        if isinstance(v, list) and not v or isinstance(v, str) and not v.strip():
            raise ValueError("must name at least one event")
        return v

    @property
    def events(self) -> list[str]:
        """The rule's event names as a list."""
        return [self.event] if isinstance(self.event, str) else list(self.event)


class Milestone(_Rule):
    """One milestone: a rule over an account's events that marks value realised."""

    name: Identifier
    category: Category
    label: str
    event: str | list[str]
    where: dict[str, Any] | None = None
    min_count: int = Field(1, ge=1)
    within_days: int | None = Field(None, ge=1)
    min_users: int = Field(1, ge=1)
    points: float = 10.0
    description: str | None = None


class WarningSign(_Rule):
    """A rule over an account's events that marks lost interest or trouble (an unregistration, a
    downgrade, a cancelled seat): converters do it far less often.

    Same rule fields as a :class:`Milestone` but no category and no points: it is not value
    realised, so it never counts toward a category or the rules-based points model. The model
    learns how much it lowers the score (a monotone-decreasing constraint) and explanations say
    so in its ``label``'s words.
    """

    name: Identifier
    label: str
    event: str | list[str]
    where: dict[str, Any] | None = None
    min_count: int = Field(1, ge=1)
    within_days: int | None = Field(None, ge=1)
    min_users: int = Field(1, ge=1)
    description: str | None = None


class Sequence(_Strict):
    """An ordered list of milestones completed in order within ``within_days``."""

    name: Identifier
    steps: list[str] = Field(min_length=2)
    within_days: int = Field(ge=1)
    label: str | None = None
    points: float = 10.0

    @property
    def wording(self) -> str:
        """Plain words for explanations."""
        return self.label or " then ".join(self.steps) + f" within {self.within_days} days"


class MilestoneSpec(_Strict):
    """The whole milestone file."""

    version: int = 1
    settings: Settings = Field(default_factory=Settings)
    milestones: list[Milestone] = Field(min_length=1)
    sequences: list[Sequence] = Field(default_factory=list)
    warning_signs: list[WarningSign] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references_resolve(self):
        names = [m.name for m in self.milestones]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"milestone names must be unique; repeated: {dupes}")
        warns = [w.name for w in self.warning_signs]
        clash = sorted({n for n in warns if warns.count(n) > 1 or n in names})
        if clash:
            raise ValueError(f"warning sign names must be unique and differ from milestone names; repeated: {clash}")
        for s in self.sequences:
            unknown = [st for st in s.steps if st not in names]
            if unknown:
                hint = " (warning signs cannot be sequence steps)" if set(unknown) & set(warns) else ""
                raise ValueError(f"sequence '{s.name}' names unknown milestones {unknown}{hint}")
        return self

    def milestone(self, name: str) -> Milestone:
        """Look a milestone up by name."""
        for m in self.milestones:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def all_events(self) -> set[str]:
        """Every event name any milestone or warning-sign rule uses."""
        return {e for m in [*self.milestones, *self.warning_signs] for e in m.events}

    def unused_milestones(self, event_names) -> list[str]:
        """Milestones and warning signs none of whose events occur in ``event_names`` (a
        warning, not an error)."""
        present = set(event_names)
        return [m.name for m in [*self.milestones, *self.warning_signs] if not present.intersection(m.events)]

    def to_yaml(self) -> str:
        """Serialise to YAML in a stable, human-editable order."""
        data = self.model_dump(mode="json", exclude_none=True)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def _describe_error(err: ValidationError, raw: dict) -> str:
    lines = []
    for e in err.errors():
        loc = e["loc"]
        where = ".".join(str(p) for p in loc)
        entry = ""
        if len(loc) >= 2 and loc[0] in ("milestones", "sequences", "warning_signs") and isinstance(loc[1], int):
            try:
                item = raw[loc[0]][loc[1]]
                entry = f" (entry: {item.get('name', item) if isinstance(item, dict) else item!r})"
            except (KeyError, IndexError, TypeError):
                pass
        lines.append(f"  {where}{entry}: {e['msg']}")
    return "\n".join(lines)


def parse_milestones(text: str, source: str = "milestones.yaml") -> MilestoneSpec:
    """Parse milestone-file text; raise :class:`SpecError` naming the offending entry."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a mapping with 'milestones' "
                        "(and optional 'settings', 'sequences', 'warning_signs')")
    try:
        return MilestoneSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(f"{source}: invalid milestone file\n{_describe_error(e, raw)}") from None


def load_milestones(path: str | Path) -> MilestoneSpec:
    """Read and validate a milestone file.

    Raises
    ------
    SpecError
        When the file is missing, not YAML, or has a malformed rule or an unknown category.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: milestone file not found")
    return parse_milestones(path.read_text(encoding="utf-8"), source=str(path))


def save_milestones(spec: MilestoneSpec, path: str | Path) -> Path:
    """Write ``spec`` atomically (a half-written milestone file would break every stage)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(spec.to_yaml(), encoding="utf-8")
    tmp.replace(path)
    return path
