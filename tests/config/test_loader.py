"""Config validation: every bad input is named with file, line, key and fix, all in one run."""

from __future__ import annotations

from pathlib import Path

import pytest

from jvmail.config import load_config
from jvmail.errors import ConfigError, ConfigProblem


def _problems(hub: Path) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load_config(hub)
    return list(caught.value.problems)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _partner(hub: Path) -> Path:
    return hub / "partners" / "your-business.toml"


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_starter_hub_loads(starter_hub: Path) -> None:
    hub = load_config(starter_hub)
    assert [p.id for p in hub.partners] == ["your-business"]
    assert hub.partners[0].lists[0].niches == ["web-design"]
    assert hub.settings.base_url == "https://jv.example.org"


def test_malformed_toml_names_file_and_line(starter_hub: Path) -> None:
    _edit(_partner(starter_hub), 'name = "Your Business"', 'name = "Your Business')
    [problem] = _problems(starter_hub)
    assert problem.file.endswith("partners/your-business.toml")
    assert problem.line == _line_of(_partner(starter_hub), 'name = "Your Business')
    assert "invalid TOML" in problem.message


def test_unknown_key_is_an_error_with_a_suggestion(starter_hub: Path) -> None:
    _edit(_partner(starter_hub), "max_sends_per_week = 1", "max_send_per_week = 1")
    [problem] = _problems(starter_hub)
    assert problem.key == "lists[0].max_send_per_week"
    assert problem.line == _line_of(_partner(starter_hub), "max_send_per_week")
    assert problem.message == "unknown key"
    assert "did you mean `max_sends_per_week`" in problem.fix


def test_window_ending_before_start(starter_hub: Path) -> None:
    _edit(_partner(starter_hub), "window_end = 2026-12-20", "window_end = 2025-12-20")
    [problem] = _problems(starter_hub)
    assert problem.key == "promotions[0]"
    assert "before window_start" in problem.message
    assert problem.line == _line_of(_partner(starter_hub), "[[promotions]]")
    assert "window_end" in problem.fix


def test_partner_id_with_spaces(starter_hub: Path) -> None:
    _edit(_partner(starter_hub), 'id = "your-business"', 'id = "your business"')
    [problem] = _problems(starter_hub)
    assert (problem.key, problem.line) == ("id", _line_of(_partner(starter_hub), "your business"))
    assert "lowercase letters, digits and single hyphens" in problem.fix


def test_duplicate_ids_across_files(starter_hub: Path) -> None:
    second = starter_hub / "partners" / "second.toml"
    text = _partner(starter_hub).read_text().replace('id = "your-business"', 'id = "second"')
    second.write_text(text)  # same list and promotion ids as the first file
    problems = _problems(starter_hub)
    assert {(p.key, p.file.split("/")[-1]) for p in problems} == {
        ("lists[0].id", "your-business.toml"),
        ("promotions[0].id", "your-business.toml"),
    }  # second.toml sorts first, so the later file is the duplicate
    assert all("first at" in p.fix and "second.toml" in p.fix for p in problems)


def test_missing_subscriber_csv(starter_hub: Path) -> None:
    (starter_hub / "subscribers" / "your-newsletter.csv").unlink()
    [problem] = _problems(starter_hub)
    assert problem.key == "lists[0].subscribers"
    assert problem.message == "file not found: subscribers/your-newsletter.csv"
    assert problem.line == _line_of(_partner(starter_hub), "subscribers =")


def test_secret_instead_of_env_var_name(starter_hub: Path) -> None:
    _edit(
        _partner(starter_hub),
        'kind = "outbox"',
        'kind = "sendgrid"\napi_key_env = "SG.abc123.secret"\n#',
    )
    _edit(_partner(starter_hub), 'directory = "outbox"', "#")
    [problem] = _problems(starter_hub)
    assert problem.key == "provider.api_key_env"
    assert "NAME of an environment variable" in problem.fix


def test_every_problem_in_every_file_in_one_run(starter_hub: Path) -> None:
    _edit(starter_hub / "jvmail.toml", 'report_day = "mon"', 'report_day = "someday"')
    other = _partner(starter_hub).read_text().replace("your-", "other-")
    (starter_hub / "partners" / "other.toml").write_text(
        other.replace("mailings_wanted = 2", 'mailings_wanted = 2\nexclude_partners = ["nobody"]')
    )
    _edit(_partner(starter_hub), "send_hour = 9", "send_hour = 25")
    (starter_hub / "partners" / "broken.toml").write_text("id = [\n")
    problems = _problems(starter_hub)
    keys = sorted((p.file.split("/")[-1], p.key) for p in problems)
    assert keys == [
        ("broken.toml", ""),
        ("jvmail.toml", "hub.report_day"),
        ("other.toml", "lists[0].subscribers"),  # other-newsletter.csv does not exist
        ("other.toml", "promotions[0].exclude_partners[0]"),
        ("your-business.toml", "lists[0].send_hour"),
    ]
    assert all(p.fix for p in problems)


def test_missing_required_key_points_at_its_table(starter_hub: Path) -> None:
    _edit(_partner(starter_hub), 'postal_address = "1 Example Street, Springfield, 12345, USA"', "")
    [problem] = _problems(starter_hub)
    assert problem.key == "postal_address"
    assert problem.fix == "add `postal_address = ...` here"


def test_template_paths_must_exist(starter_hub: Path) -> None:
    _edit(
        _partner(starter_hub),
        'html = "<p>Book a free review',
        'html_template = "promotions/review.html"\nhtml_unused = "<p>Book a free review',
    )
    _edit(_partner(starter_hub), "html_unused = ", "# ")
    [problem] = _problems(starter_hub)
    assert problem.key == "promotions[0].html_template"
    assert problem.message == "file not found: promotions/review.html"


def test_missing_directory(tmp_path: Path) -> None:
    [problem] = _problems(tmp_path / "nowhere")
    assert problem.message == "config directory not found"


def test_overlap_must_name_another_partner(starter_hub: Path) -> None:
    _edit(_partner(starter_hub), "send_hour = 9", "send_hour = 9\noverlap = { nobody = 0.3 }")
    [problem] = _problems(starter_hub)
    assert problem.key == "lists[0].overlap.nobody"
    assert problem.message == "not another partner: 'nobody'"


def test_scheduler_settings_are_validated(starter_hub: Path) -> None:
    (starter_hub / "jvmail.toml").write_text(
        (starter_hub / "jvmail.toml").read_text() + "\n[scheduler]\nbalance_weight = 0.3\n"
    )
    [problem] = _problems(starter_hub)
    assert problem.key == "scheduler.balance_weight"
    assert problem.line == len((starter_hub / "jvmail.toml").read_text().splitlines())


@pytest.mark.parametrize("setting", ["debt_decay = 1.5", "conversion_rate = 0"])
def test_planner_settings_are_validated(starter_hub: Path, setting: str) -> None:
    config = starter_hub / "jvmail.toml"
    config.write_text(config.read_text() + f"\n[scheduler]\n{setting}\n")
    [problem] = _problems(starter_hub)
    assert problem.key == f"scheduler.{setting.split(maxsplit=1)[0]}"


@pytest.mark.parametrize(
    ("key", "url"),
    [("database_url", "postgresql://db/jv"), ("redis_url", "redis://127.0.0.1:6379/0")],
)
def test_urls_in_the_config_are_refused_with_where_they_belong(
    starter_hub: Path, key: str, url: str
) -> None:
    # Only `jvmail sync` reads the config: a URL here would reach that command and no other.
    config = starter_hub / "jvmail.toml"
    _edit(
        config,
        'base_url = "https://jv.example.org"',
        f'base_url = "https://jv.example.org"\n{key} = "{url}"',
    )
    [problem] = _problems(starter_hub)
    assert problem.key == f"hub.{key}"
    assert problem.line == _line_of(config, f"{key} =")
    assert problem.message == (
        "belongs in the environment, not in jvmail.toml: every command must reach the same one"
    )
    assert "JVMAIL_DATABASE_URL" in problem.fix
