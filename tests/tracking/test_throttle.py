"""Per-client rate limits: the token buckets on an injected clock, then the real app on SQLite
(clicks, one-click unsubscribes, webhooks during a flood of forgeries, trusted proxies, bounded
memory). A client's address is set by a trusted proxy's X-Forwarded-For, as behind the HTTPS
front, so one test client can be many addresses."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import func, select
from starlette.testclient import TestClient

from jvmail.cli import cli
from jvmail.db import make_engine, make_sessionmaker
from jvmail.db.models import EventType, Partner, Suppression, TrackingEvent
from jvmail.tracking.app import Settings, Tracker, create_app
from jvmail.tracking.links import Keyring
from jvmail.tracking.throttle import Buckets, Budget, Limiter, Limits, client_address
from tests.tracking.serving import sent_hub, serving
from tests.tracking.signing import ec_key, sendgrid_headers

KEYS = Keyring.from_hex(["ab" * 32])
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0"
PROXY = "10.0.0.1"
SLOW = 0.001  # tokens a second: none comes back during a test


# -- the buckets ------------------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    bucket = Buckets(Budget(3, 2.0), clients=10)
    assert [bucket.take("a", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("a", 100.0) == pytest.approx(0.5)  # one token every half second
    assert bucket.take("a", 100.25) == pytest.approx(0.25)  # refusals spend nothing
    assert bucket.take("a", 100.5) == 0.0
    assert bucket.take("a", 100.5) == pytest.approx(0.5)
    assert bucket.take("b", 100.5) == 0.0  # another client has its own
    # Idle long enough, it is full again, never fuller: the burst once more, then a wait.
    assert [bucket.take("a", 200.0) for _ in range(4)][-1] == pytest.approx(0.5)


def test_spending_without_asking_drains_a_bucket_and_waiting_spends_nothing() -> None:
    bucket = Buckets(Budget(2, 1.0), clients=10)
    assert bucket.wait("a", 0.0) == 0.0
    for _ in range(4):  # refusals counted after the fact, past empty
        bucket.spend("a", 0.0)
    assert bucket.wait("a", 0.0) == pytest.approx(3.0)
    assert bucket.wait("a", 0.0) == pytest.approx(3.0)
    assert bucket.wait("a", 3.0) == 0.0


def test_a_bucket_remembers_at_most_its_clients_the_least_recently_used_forgotten() -> None:
    bucket = Buckets(Budget(1, SLOW), clients=100)
    for n in range(1000):
        bucket.take(f"198.51.{n // 256}.{n % 256}", 0.0)
        bucket.take("203.0.113.1", 0.0)  # used all along: kept
    assert len(bucket) == 100
    assert bucket.take("203.0.113.1", 0.0) > 0
    assert bucket.take("198.51.0.0", 0.0) == 0.0  # forgotten: a fresh bucket


def test_budgets_parse_print_and_travel_through_the_environment() -> None:
    assert Budget.parse("300/100") == Budget(300, 100.0)
    assert Budget.parse(" 20/0.5 ") == Budget(20, 0.5)
    assert Budget.parse("0").off
    for bad in ("300", "x/1", "0/5", "5/0", "5/-1", "5/inf", "-1/2"):
        with pytest.raises(ValueError, match=r"300/100|at least 1|could not convert"):
            Budget.parse(bad)
    limits = Limits(clicks=Budget(10, 2.5), webhooks=Budget(0, 0), trusted_proxies=("10.0.0.0/8",))
    assert Limits.from_env(limits.env()) == limits
    assert Limits.from_env({}) == Limits()
    assert Limits.from_env({"JVMAIL_TRUSTED_PROXIES": ""}).trusted_proxies == ()


def test_the_forwarded_address_counts_only_from_a_trusted_proxy() -> None:
    trusted = {"10.0.0.1", "10.0.0.2"}.__contains__
    forwarded = [(b"x-forwarded-for", b"6.6.6.6, 198.51.100.7"), (b"x-forwarded-for", b"10.0.0.2")]
    assert client_address("203.0.113.5", forwarded, trusted) == "203.0.113.5"
    # The rightmost entry that is no trusted proxy: what the client wrote, to its left, is not.
    assert client_address("10.0.0.1", forwarded, trusted) == "198.51.100.7"
    assert client_address("10.0.0.1", [(b"x-forwarded-for", b"10.0.0.2")], trusted) == "10.0.0.2"
    assert client_address("10.0.0.1", [], trusted) == "10.0.0.1"
    # IPv6 clients are keyed by their /64.
    assert client_address("2001:db8:1:2:aaaa::1", [], trusted) == "2001:db8:1:2::/64"
    assert client_address("::ffff:198.51.100.7", [], trusted) == "198.51.100.7"  # dual stack
    networks = Limiter(Limits(trusted_proxies=("10.1.0.0/16",))).proxies
    assert "10.1.200.3" in networks
    assert "10.2.0.1" not in networks
    assert "unix" not in networks


# -- the app ----------------------------------------------------------------------------------


@pytest.fixture
def hub(tmp_path: Path) -> tuple[str, int, int]:
    """(database url, mailing id, first delivery id) of a hub whose mailing went out."""
    return sent_hub(tmp_path)


@contextmanager
def served(
    url: str, limits: Limits, peer: str = PROXY, env: dict[str, str] | None = None
) -> Iterator[TestClient]:
    app = create_app(Settings(url, env=env or {}, throttle=limits))
    with TestClient(app, client=(peer, 40000)) as client:
        client.headers["user-agent"] = BROWSER
        yield client


def _by(address: str) -> dict[str, str]:
    return {"x-forwarded-for": address}


def _count(url: str, model: type[TrackingEvent] | type[Suppression], *where: object) -> int:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        n = session.scalar(select(func.count()).select_from(model).where(*where))  # type: ignore[arg-type]
    engine.dispose()
    return int(n or 0)


def test_clicks_over_budget_get_429_with_retry_after_and_are_not_recorded(
    hub: tuple[str, int, int],
) -> None:
    url, mailing, first = hub
    limits = Limits(clicks=Budget(5, SLOW), trusted_proxies=(PROXY,))
    with served(url, limits) as client:
        codes = []
        for n in range(8):
            token = KEYS.sign(mailing, first + n, 1)
            answer = client.get(f"/c/{token}", headers=_by("198.51.100.7"), follow_redirects=False)
            codes.append(answer.status_code)
        pixel = client.get(f"/o/{KEYS.sign(mailing, first, 0)}.gif", headers=_by("198.51.100.7"))
        assert codes == [302] * 5 + [429] * 3
        assert pixel.status_code == 429  # opens share the clicks' budget
        assert 900 <= int(answer.headers["retry-after"]) <= 1000
        assert "try the link again" in answer.text
        token = KEYS.sign(mailing, first + 9, 1)
        other = client.get(f"/c/{token}", headers=_by("198.51.100.8"), follow_redirects=False)
        assert other.status_code == 302  # another address has its own budget
        tracker: Tracker = client.app.state.tracker  # type: ignore[attr-defined]
        client.portal.call(tracker.flush)  # type: ignore[union-attr]
    assert _count(url, TrackingEvent, TrackingEvent.type == EventType.CLICKED) == 6
    assert _count(url, TrackingEvent, TrackingEvent.type == EventType.OPENED) == 0


def test_a_throttled_one_click_unsubscribe_changes_nothing_and_says_so(
    hub: tuple[str, int, int],
) -> None:
    url, mailing, first = hub
    limits = Limits(unsubscribe=Budget(2, SLOW), trusted_proxies=(PROXY,))
    one_click = {"List-Unsubscribe": "One-Click"}
    with served(url, limits) as client:
        page = client.get(f"/u/{KEYS.sign(mailing, first, 0)}", headers=_by("198.51.100.7"))
        assert page.status_code == 200
        done = client.post(
            f"/u/{KEYS.sign(mailing, first, 0)}", data=one_click, headers=_by("198.51.100.7")
        )
        assert done.status_code == 200
        refused = client.post(
            f"/u/{KEYS.sign(mailing, first + 1, 0)}", data=one_click, headers=_by("198.51.100.7")
        )
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert "not</b> unsubscribed" in refused.text
    assert _count(url, Suppression) == 1
    assert _count(url, TrackingEvent, TrackingEvent.type == EventType.UNSUBSCRIBED) == 1


def test_signed_webhooks_are_accepted_during_a_flood_of_forged_ones(
    hub: tuple[str, int, int],
) -> None:
    url, _, first = hub
    key, public = ec_key()
    forger, _ = ec_key()
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        sender = session.scalars(select(Partner).where(Partner.slug == "sender")).one()
        sender.provider_kind = "sendgrid"
        sender.provider = {"kind": "sendgrid", "webhook_public_key_env": "SENDER_SG_HOOK"}
        session.commit()
    engine.dispose()
    now = dt.datetime.now(dt.UTC)

    def body(n: int) -> bytes:
        event = {"event": "delivered", "timestamp": int(now.timestamp()), "sg_event_id": f"e{n}"}
        return orjson.dumps([event | {"email": "x@mail.example", "jv_delivery": str(first + n)}])

    limits = Limits(webhooks=Budget(3, SLOW), trusted_proxies=(PROXY,))
    with served(url, limits, env={"SENDER_SG_HOOK": public}) as client:

        def post(n: int, signer: object, address: str) -> int:
            headers = sendgrid_headers(signer, body(n), now) | _by(address)  # type: ignore[arg-type]
            return client.post(
                "/webhooks/sendgrid/sender", content=body(n), headers=headers
            ).status_code

        flood, signed = [], []
        for n in range(10):
            flood += [post(n, forger, "203.0.113.66") for _ in range(5)]
            signed.append(post(n, key, "198.51.100.10"))  # never spends: the budget is 3
        from_forger = post(11, key, "203.0.113.66")
    assert flood[:3] == [403] * 3
    assert set(flood[3:]) == {429}
    assert signed == [200] * 10
    # A genuine request from the forger's own address waits with it (the provider retries).
    assert from_forger == 429
    assert _count(url, TrackingEvent, TrackingEvent.provider == "sendgrid") == 10


def test_postbacks_spend_their_budget_only_when_refused(hub: tuple[str, int, int]) -> None:
    url, _, _ = hub
    limits = Limits(postbacks=Budget(2, SLOW), trusted_proxies=(PROXY,))
    with served(url, limits) as client:
        codes = [
            client.post("/postback/owner-offer", content=b"{}", headers=_by("203.0.113.9"))
            for _ in range(4)
        ]
    assert [c.status_code for c in codes] == [403, 403, 429, 429]  # no secret set up: refused
    assert codes[-1].json()["error"].startswith("too many refused requests")


def test_the_forwarded_header_is_honoured_only_from_a_trusted_peer(
    hub: tuple[str, int, int],
) -> None:
    url, _, _ = hub
    limits = Limits(clicks=Budget(1, SLOW), trusted_proxies=(PROXY,))
    with served(url, limits, peer=PROXY) as client:
        codes = [client.get("/c/nope", headers=_by(a)).status_code for a in ("1.1.1.1", "2.2.2.2")]
        assert codes == [404, 404]  # two clients behind the proxy, one request each
        assert client.get("/c/nope", headers=_by("1.1.1.1")).status_code == 429
    with served(url, limits, peer="203.0.113.5") as client:
        codes = [client.get("/c/nope", headers=_by(a)).status_code for a in ("1.1.1.1", "2.2.2.2")]
        assert codes == [404, 429]  # a direct client cannot pose as others


def test_memory_stays_bounded_under_a_flood_from_many_addresses(
    hub: tuple[str, int, int],
) -> None:
    url, _, _ = hub
    limits = Limits(clicks=Budget(1, SLOW), trusted_proxies=(PROXY,), clients=50)
    with served(url, limits) as client:
        for n in range(300):
            client.get("/c/nope", headers=_by(f"198.51.{n // 250}.{n % 250}"))
        limiter: Limiter = client.app.state.limiter  # type: ignore[attr-defined]
        assert len(limiter.buckets["clicks"]) == 50


def test_a_zero_budget_is_no_limit_and_serve_refuses_a_bad_one(
    hub: tuple[str, int, int],
) -> None:
    url, _, _ = hub
    with served(url, Limits(clicks=Budget.parse("0"), trusted_proxies=(PROXY,))) as client:
        assert {client.get("/c/nope").status_code for _ in range(50)} == {404}
        limiter: Limiter = client.app.state.limiter  # type: ignore[attr-defined]
        assert "clicks" not in limiter.buckets
    answer = CliRunner().invoke(cli, ["--db", url, "serve", "--throttle-clicks", "300"])
    assert answer.exit_code == 2
    assert "BURST/PER_SECOND" in answer.output


def test_serve_passes_its_budgets_to_the_app(hub: tuple[str, int, int]) -> None:
    url, _, _ = hub
    with serving(url, {"JVMAIL_THROTTLE_CLICKS": "2/0.001"}) as (base, _), requests.Session() as s:
        codes = [s.get(f"{base}/c/nope", timeout=5).status_code for _ in range(3)]
        unlimited = {s.get(f"{base}/healthz", timeout=5).status_code for _ in range(5)}
    assert codes == [404, 404, 429]
    assert unlimited == {200}
