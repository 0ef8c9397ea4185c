"""Read a config directory (`jvmail.toml` + `partners/*.toml`) into a validated :class:`Hub`.

Every file is parsed and validated before anything is returned, and every problem found in any
file is collected, so one run reports them all. Nothing here writes.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from jvmail.config.locate import KeyIndex
from jvmail.config.models import (
    HubFile,
    HubSettings,
    ListConfig,
    MailgunAccount,
    OutboxAccount,
    PartnerConfig,
    PostmarkAccount,
    PromotionConfig,
    SchedulerSettings,
    SendGridAccount,
    SesAccount,
    SmtpAccount,
)
from jvmail.config.problems import dotted, problems_from_validation
from jvmail.errors import ConfigError, ConfigProblem

__all__ = ["HUB_FILE", "PARTNERS_DIR", "Hub", "load_config"]

HUB_FILE = "jvmail.toml"
PARTNERS_DIR = "partners"

_PARTNER_MODELS: tuple[type[BaseModel], ...] = (
    PartnerConfig,
    ListConfig,
    PromotionConfig,
    OutboxAccount,
    SendGridAccount,
    MailgunAccount,
    PostmarkAccount,
    SesAccount,
    SmtpAccount,
)


@dataclass(frozen=True)
class Hub:
    """A validated config directory. Paths in it are resolved against ``root``."""

    root: Path
    settings: HubSettings
    scheduler: SchedulerSettings
    partners: tuple[PartnerConfig, ...]

    def path(self, relative: str) -> Path:
        """A path from the config, resolved against the config directory."""
        return (self.root / relative).resolve()


@dataclass
class _Parsed:
    path: Path
    label: str
    data: dict[str, Any]
    index: KeyIndex


class _Collector:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[ConfigProblem] = []

    def label(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root.parent))
        except ValueError:
            return str(path)

    def add(self, file: str, line: int | None, key: str, message: str, fix: str) -> None:
        self.problems.append(ConfigProblem(file, line, key, message, fix))

    def parse(self, path: Path) -> _Parsed | None:
        label = self.label(path)
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8-sig")
            data = tomllib.loads(text)
        except UnicodeDecodeError as exc:
            self.add(label, None, "", f"not UTF-8 ({exc.reason})", "save the file as UTF-8")
            return None
        except tomllib.TOMLDecodeError as exc:
            line = _toml_line(exc)
            self.add(label, line, "", f"invalid TOML: {exc}", "correct the TOML syntax there")
            return None
        except OSError as exc:
            self.add(label, None, "", f"cannot read: {exc.strerror}", "check the file exists")
            return None
        return _Parsed(path, label, data, KeyIndex(text))


def _toml_line(exc: tomllib.TOMLDecodeError) -> int | None:
    lineno = getattr(exc, "lineno", None)  # Python 3.14+
    if isinstance(lineno, int):
        return lineno
    text = str(exc)
    marker = "(at line "
    if marker in text:
        digits = text.split(marker, 1)[1].split(",", 1)[0].rstrip(")")
        return int(digits) if digits.isdigit() else None
    return None


def load_config(root: Path) -> Hub:
    """Validate the config directory ``root``.

    Returns:
        The validated :class:`Hub`.

    Raises:
        ConfigError: with every problem found in every file.
    """
    root = root.resolve()
    collect = _Collector(root)
    hub_file = _load_hub(root, collect)
    partners = list(_load_partners(root, collect))
    _check_across_files(root, partners, collect)
    if collect.problems or hub_file is None:
        raise ConfigError(collect.problems)
    return Hub(
        root=root,
        settings=hub_file.hub,
        scheduler=hub_file.scheduler,
        partners=tuple(p for p, _ in partners),
    )


def _load_hub(root: Path, collect: _Collector) -> HubFile | None:
    path = root / HUB_FILE
    if not root.is_dir():
        collect.add(str(root), None, "", "config directory not found", "run `jvmail init DIR`")
        return None
    if not path.is_file():
        collect.add(collect.label(path), None, "", "missing", "create it: `jvmail init DIR`")
        return None
    parsed = collect.parse(path)
    if parsed is None:
        return None
    try:
        return HubFile.model_validate(parsed.data)
    except ValidationError as exc:
        models = (HubFile, HubSettings, SchedulerSettings)
        collect.problems.extend(problems_from_validation(exc, parsed.label, parsed.index, models))
        return None


def _load_partners(root: Path, collect: _Collector) -> Iterator[tuple[PartnerConfig, _Parsed]]:
    folder = root / PARTNERS_DIR
    if not folder.is_dir():
        if root.is_dir():
            fix = "create it with one <partner-id>.toml per partner"
            collect.add(collect.label(folder), None, "", "folder missing", fix)
        return
    for path in sorted(folder.glob("*.toml")):
        parsed = collect.parse(path)
        if parsed is None:
            continue
        try:
            partner = PartnerConfig.model_validate(parsed.data)
        except ValidationError as exc:
            found = problems_from_validation(exc, parsed.label, parsed.index, _PARTNER_MODELS)
            collect.problems.extend(found)
            continue
        yield partner, parsed


def _check_across_files(
    root: Path, partners: list[tuple[PartnerConfig, _Parsed]], collect: _Collector
) -> None:
    seen: dict[tuple[str, str], str] = {}
    partner_ids = {p.id for p, _ in partners}

    def claim(kind: str, ident: str, parsed: _Parsed, loc: tuple[str | int, ...]) -> None:
        line = parsed.index.line_of(loc)
        where = f"{parsed.label}:{line}" if line else parsed.label
        first = seen.setdefault((kind, ident), where)
        if first != where:
            fix = f"rename one of them; ids must be unique across all files (first at {first})"
            collect.add(parsed.label, line, dotted(loc), f"duplicate {kind} id {ident!r}", fix)

    def must_exist(relative: str, parsed: _Parsed, loc: tuple[str | int, ...]) -> None:
        if not (root / relative).is_file():
            fix = f"create {relative} or correct the path (it is relative to {root})"
            line = parsed.index.line_of(loc)
            collect.add(parsed.label, line, dotted(loc), f"file not found: {relative}", fix)

    for partner, parsed in partners:
        claim("partner", partner.id, parsed, ("id",))
        for i, lst in enumerate(partner.lists):
            claim("list", lst.id, parsed, ("lists", i, "id"))
            must_exist(lst.subscribers, parsed, ("lists", i, "subscribers"))
            for other in sorted(lst.overlap):
                loc: tuple[str | int, ...] = ("lists", i, "overlap", other)
                if other == partner.id or other not in partner_ids:
                    fix = "name another partner of the hub; overlap is the share of this list "
                    fix += "also subscribed to that partner's audience"
                    line = parsed.index.line_of(loc)
                    collect.add(
                        parsed.label, line, dotted(loc), f"not another partner: {other!r}", fix
                    )
        for i, promo in enumerate(partner.promotions):
            claim("promotion", promo.id, parsed, ("promotions", i, "id"))
            for part in ("html_template", "text_template"):
                value = getattr(promo, part)
                if value is not None:
                    must_exist(value, parsed, ("promotions", i, part))
            for j, other in enumerate(promo.exclude_partners):
                loc = ("promotions", i, "exclude_partners", j)
                line = parsed.index.line_of(loc)
                if other == partner.id:
                    fix = "remove it: a partner never mails its own promotion anyway"
                    collect.add(parsed.label, line, dotted(loc), "names its own partner", fix)
                elif other not in partner_ids:
                    fix = f"use one of the partner ids: {', '.join(sorted(partner_ids))}"
                    collect.add(parsed.label, line, dotted(loc), f"unknown partner {other!r}", fix)
