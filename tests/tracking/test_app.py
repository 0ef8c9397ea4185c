"""The tracking server end to end on SQLite and PostgreSQL: a mailing is sent into an outbox, then
its links, pixel and unsubscribe link are used through the real app."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from jvmail import mailings
from jvmail.db.models import (
    Delivery,
    EventType,
    LedgerEntry,
    LedgerKind,
    Mailing,
    MailingStatus,
    Partner,
    Promotion,
    Subscriber,
    SubscriberStatus,
    Suppression,
    TrackingEvent,
)
from jvmail.dispatch.deliveries import claim
from jvmail.dispatch.outbox import materialize
from jvmail.dispatch.pipeline import dispatch, send_batch
from jvmail.providers.outbox import OutboxProvider
from jvmail.tracking.app import Settings, Tracker, create_app, postback_signature
from jvmail.tracking.credit import credit_measured
from jvmail.tracking.links import Keyring, review_url
from tests.dispatch.conftest import Hub, build_hub, mailing, second_mailing

KEYS = Keyring.from_hex(["ab" * 32])
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Safari/605.1.15"
SECRET = "postback-secret-of-owner"


@dataclass
class Served:
    client: TestClient
    tracker: Tracker
    session: Session
    hub: Hub
    deliveries: dict[str, int]  # email -> delivery id

    def flush(self) -> None:
        self.client.portal.call(self.tracker.flush)  # type: ignore[union-attr]
        self.session.commit()  # a new transaction sees what the server wrote

    def click(self, email: str, link: int = 1, **headers: str) -> int:
        token = KEYS.sign(self.hub.mailing.id, self.deliveries[email], link)
        answer = self.client.get(
            f"/c/{token}", headers={"user-agent": BROWSER, **headers}, follow_redirects=False
        )
        return answer.status_code

    def events(self, kind: EventType) -> list[TrackingEvent]:
        self.session.commit()
        return list(
            self.session.scalars(
                select(TrackingEvent).where(TrackingEvent.type == kind).order_by(TrackingEvent.id)
            )
        )


def _send(session: Session, hub: Hub, folder: Path) -> dict[str, int]:
    provider = OutboxProvider(folder)
    for bounds in dispatch(session, hub.mailing.id, batch_size=100):
        send_batch(session, provider, hub.mailing.id, bounds)
    rows = session.execute(
        select(Subscriber.email, Delivery.id)
        .join(Delivery, Delivery.subscriber_id == Subscriber.id)
        .where(Delivery.mailing_id == hub.mailing.id)
    )
    return dict(rows.all())


@pytest.fixture
def served(db_url: str, session: Session, tmp_path: Path) -> Iterator[Served]:
    hub = build_hub(session)
    promo = session.get(Promotion, hub.promotion.id)
    assert promo is not None
    promo.html += "<p><a href='https://owner.example/faq'>FAQ</a></p>"
    owner = session.get(Partner, hub.owner.id)
    assert owner is not None
    owner.postback_secret_env = "OWNER_POSTBACK"
    session.commit()
    deliveries = _send(session, hub, tmp_path / "outbox")
    settings = Settings(db_url, flush_seconds=3600, env={"OWNER_POSTBACK": SECRET})
    app = create_app(settings)
    with TestClient(app) as client:
        yield Served(client, app.state.tracker, session, hub, deliveries)


def test_a_click_goes_to_the_registered_url_and_is_recorded_once_written(served: Served) -> None:
    mailing = served.session.get(Mailing, served.hub.mailing.id)
    assert mailing is not None
    assert mailing.links == ["https://owner.example/offer", "https://owner.example/faq"]
    token = KEYS.sign(mailing.id, served.deliveries["reader3@mail.example"], 2)
    answer = served.client.get(
        f"/c/{token}", headers={"user-agent": BROWSER}, follow_redirects=False
    )
    assert answer.status_code == 302
    assert answer.headers["location"] == "https://owner.example/faq"
    assert "no-store" in answer.headers["cache-control"]
    assert served.events(EventType.CLICKED) == []  # buffered, not yet written
    served.flush()
    (click,) = served.events(EventType.CLICKED)
    assert click.delivery_id == served.deliveries["reader3@mail.example"]
    assert click.mailing_id == mailing.id
    assert click.link_index == 2
    assert click.human is True


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1],  # truncated
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # signature changed
        lambda t: Keyring.from_hex(["cd" * 32]).sign(*KEYS.read(t)),  # type: ignore[misc]
        lambda t: "not-a-token",
        lambda t: t + "?u=https://evil.example",
    ],
    ids=["truncated", "tampered", "other-key", "garbage", "outside-url"],
)
def test_bad_click_tokens_get_404_and_record_nothing(served: Served, mangle: object) -> None:
    token = KEYS.sign(served.hub.mailing.id, served.deliveries["reader1@mail.example"], 1)
    bad = mangle(token)  # type: ignore[operator]
    answer = served.client.get(f"/c/{bad}", follow_redirects=False)
    if "?u=" in bad:  # a query string is not part of the token: still the registered URL
        assert answer.headers["location"] == "https://owner.example/offer"
    else:
        assert answer.status_code == 404
        assert "location" not in answer.headers
    served.flush()
    assert len(served.events(EventType.CLICKED)) == (1 if "?u=" in bad else 0)


def test_a_link_number_the_mailing_does_not_have_is_404(served: Served) -> None:
    assert served.click("reader1@mail.example", link=3) == 404
    other = KEYS.sign(served.hub.mailing.id + 99, served.deliveries["reader1@mail.example"], 1)
    assert served.client.get(f"/c/{other}", follow_redirects=False).status_code == 404
    served.flush()
    assert served.events(EventType.CLICKED) == []


def test_a_token_naming_another_mailings_delivery_records_nothing(
    served: Served, tmp_path: Path
) -> None:
    other = second_mailing(served.session, served.hub)
    for bounds in dispatch(served.session, other.id, batch_size=100):
        send_batch(served.session, OutboxProvider(tmp_path / "second"), other.id, bounds)
    # Tokens the hub never signed: the second mailing's links with a delivery of the first.
    delivery = served.deliveries["reader1@mail.example"]
    click = KEYS.sign(other.id, delivery, 1)
    answer = served.client.get(
        f"/c/{click}", headers={"user-agent": BROWSER}, follow_redirects=False
    )
    assert answer.status_code in (302, 404)
    if answer.status_code == 302:  # never anywhere but the token's own mailing's link
        assert answer.headers["location"] == "https://owner.example/more"
    pixel = KEYS.sign(other.id, delivery, 0)
    served.client.get(f"/o/{pixel}.gif", headers={"user-agent": BROWSER})
    served.flush()
    assert served.events(EventType.CLICKED) == []
    assert served.events(EventType.OPENED) == []


def test_scanners_and_sweeps_are_stored_but_not_human(served: Served) -> None:
    token = KEYS.sign(served.hub.mailing.id, served.deliveries["reader1@mail.example"], 1)
    assert served.client.head(f"/c/{token}", follow_redirects=False).status_code == 302
    assert served.click("reader2@mail.example", **{"user-agent": "Barracuda Sentinel"}) == 302
    # reader4's mail gateway follows both links of the message within a second
    assert served.click("reader4@mail.example", 1) == 302
    assert served.click("reader4@mail.example", 2) == 302
    # reader5 clicks one link: a person
    assert served.click("reader5@mail.example", 1) == 302
    served.flush()
    human = {e.delivery_id: e.human for e in served.events(EventType.CLICKED) if e.delivery_id}
    d = served.deliveries
    assert human == {
        d["reader1@mail.example"]: False,
        d["reader2@mail.example"]: False,
        d["reader4@mail.example"]: False,
        d["reader5@mail.example"]: True,
    }


def test_the_open_pixel_is_a_gif_and_records_an_open(served: Served) -> None:
    token = KEYS.sign(served.hub.mailing.id, served.deliveries["reader1@mail.example"], 0)
    answer = served.client.get(f"/o/{token}.gif", headers={"user-agent": BROWSER})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/gif"
    assert answer.content.startswith(b"GIF89a")
    assert served.client.get(f"/o/{token}x.gif").status_code == 404
    served.flush()
    (opened,) = served.events(EventType.OPENED)
    assert opened.human is True


def _subscriber_statuses(session: Session, email: str) -> list[SubscriberStatus]:
    session.commit()
    return sorted(session.scalars(select(Subscriber.status).where(Subscriber.email == email)))


@pytest.mark.parametrize("multipart", [False, True], ids=["form-urlencoded", "multipart"])
def test_one_click_unsubscribe(served: Served, multipart: bool) -> None:
    email = "reader2@mail.example"  # on both of the sender's lists
    token = KEYS.sign(served.hub.mailing.id, served.deliveries[email], 0)
    page = served.client.get(f"/u/{token}")
    assert page.status_code == 200
    assert "Sender" in page.text  # the list owner's name
    assert 'value="One-Click"' in page.text
    assert _subscriber_statuses(served.session, email) == [SubscriberStatus.SUBSCRIBED] * 2
    body = {"List-Unsubscribe": "One-Click"}
    for _ in range(2):  # again: the same answer, nothing more
        if multipart:
            answer = served.client.post(
                f"/u/{token}", files={"List-Unsubscribe": (None, "One-Click")}
            )
        else:
            answer = served.client.post(f"/u/{token}", data=body, follow_redirects=False)
        assert answer.status_code == 200
        assert "location" not in answer.headers
    assert _subscriber_statuses(served.session, email) == [SubscriberStatus.UNSUBSCRIBED] * 2
    (row,) = served.session.scalars(select(Suppression)).all()
    assert (row.partner_id, row.email) == (served.hub.sender.id, email)
    assert len(served.events(EventType.UNSUBSCRIBED)) == 1
    # The sender's next mailing (another promotion, its other list) never takes the address.
    promo = served.session.get(Promotion, served.hub.promotion.id)
    assert promo is not None
    other = Promotion(
        slug="owner-second",
        partner_id=promo.partner_id,
        subject="Again",
        html=promo.html,
        text=promo.text,
        landing_urls=promo.landing_urls,
        window_start=promo.window_start,
        window_end=promo.window_end,
        niches=promo.niches,
        mailings_wanted=1,
        exclude_partners=[],
    )
    served.session.add(other)
    served.session.flush()
    nxt = mailing(served.session, other, served.hub.lists[1])
    served.session.commit()
    materialize(served.session, nxt.id)
    served.session.commit()
    held = claim(served.session, nxt.id, (0, 10**12), lease=dt.timedelta(minutes=1), limit=100)
    assert email not in {c.email for c in held}
    assert len(held) == 5  # the extra list's six readers, less the one who left


def test_an_unsubscribe_post_without_one_click_changes_nothing(served: Served) -> None:
    token = KEYS.sign(served.hub.mailing.id, served.deliveries["reader2@mail.example"], 0)
    assert served.client.post(f"/u/{token}", data={"other": "x"}).status_code == 400
    assert (
        served.client.post(f"/u/{token}x", data={"List-Unsubscribe": "One-Click"}).status_code
        == 404
    )
    click = KEYS.sign(served.hub.mailing.id, served.deliveries["reader2@mail.example"], 1)
    assert (
        served.client.post(f"/u/{click}", data={"List-Unsubscribe": "One-Click"}).status_code == 404
    )
    assert served.session.scalar(select(func.count()).select_from(Suppression)) == 0
    assert (
        _subscriber_statuses(served.session, "reader2@mail.example")
        == [SubscriberStatus.SUBSCRIBED] * 2
    )


def test_the_ledger_is_credited_with_unique_human_clicks(served: Served) -> None:
    mailing_row = served.session.get(Mailing, served.hub.mailing.id)
    assert mailing_row is not None
    assert mailing_row.status == MailingStatus.SENT
    for email in ("reader1@mail.example", "reader1@mail.example", "reader6@mail.example"):
        assert served.click(email) == 302  # reader1 twice: one unique click
    assert served.click("reader8@mail.example", **{"user-agent": "python-requests/2.32"}) == 302
    served.flush()
    assert credit_measured(served.session) == 1
    served.session.commit()
    assert credit_measured(served.session) == 0  # nothing changed: nothing posted
    assert served.click("reader9@mail.example") == 302
    served.flush()
    assert credit_measured(served.session) == 1
    served.session.commit()
    pending = served.session.scalars(
        select(LedgerEntry.value)
        .where(LedgerEntry.kind == LedgerKind.PENDING)
        .order_by(LedgerEntry.id)
    ).all()
    assert pending == [2.0, 3.0]
    entry = served.session.scalars(select(LedgerEntry)).first()
    assert entry is not None
    assert (entry.giver_id, entry.receiver_id) == (served.hub.sender.id, served.hub.owner.id)


def _postback(
    served: Served, body: dict[str, object], *, secret: str = SECRET, age: int = 0
) -> int:
    raw = orjson.dumps(body)
    stamp = int(time.time()) - age
    answer = served.client.post(
        f"/postback/{served.hub.promotion.slug}",
        content=raw,
        headers={
            "x-jvmail-timestamp": str(stamp),
            "x-jvmail-signature": postback_signature(secret, stamp, raw),
        },
    )
    return answer.status_code


def test_conversions_and_refunds_by_signed_postback(served: Served) -> None:
    click = KEYS.sign(served.hub.mailing.id, served.deliveries["reader1@mail.example"], 1)
    sale = {"click": click, "amount": 49.0, "id": "order-1"}
    assert _postback(served, sale) == 200
    assert _postback(served, sale) == 200  # the shop retried: stored once
    assert _postback(served, {"click": click, "amount": -49.0, "id": "order-1"}) == 200
    assert _postback(served, sale | {"id": "order-2"}, secret="wrong") == 401
    assert _postback(served, sale | {"id": "order-3"}, age=3600) == 401
    assert _postback(served, sale | {"id": "order-4", "click": click[:-2]}) == 400
    assert _postback(served, {"click": click, "id": "order-5"}) == 400
    # Signed for this mailing but naming a delivery that is not one of its own.
    other = served.deliveries["reader1@mail.example"] + 10_000
    stray = KEYS.sign(served.hub.mailing.id, other, 1)
    assert _postback(served, sale | {"id": "order-6", "click": stray}) == 400
    amounts = sorted(e.amount or 0.0 for e in served.events(EventType.CONVERTED))
    assert amounts == [-49.0, 49.0]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_review_of_a_mailing_another_process_holds_says_try_again(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Held by a process stopped half way (the only way a review waits on anything): the
    # sender is told to try again, and nothing changes until it lets go.
    monkeypatch.setattr(mailings, "LOCK_WAIT_MS", 200)
    session = served.session
    promo = session.get(Promotion, served.hub.promotion.id)
    assert promo is not None
    waiting = mailing(session, promo, served.hub.lists[1])
    waiting.status = MailingStatus.AWAITING_APPROVAL
    session.commit()
    url = review_url("", KEYS, waiting.id)
    session.execute(select(Mailing.id).where(Mailing.id == waiting.id).with_for_update(read=True))
    answer = served.client.post(url, data={"action": "approve"})
    assert (answer.status_code, "try again in a minute" in answer.text) == (503, True)
    session.commit()
    assert session.get(Mailing, waiting.id).status == MailingStatus.AWAITING_APPROVAL  # type: ignore[union-attr]
    assert served.client.post(url, data={"action": "approve"}).status_code == 200


def test_a_sender_approves_or_declines_by_its_signed_link(served: Served) -> None:
    session = served.session
    promo = session.get(Promotion, served.hub.promotion.id)
    assert promo is not None
    waiting = [mailing(session, promo, served.hub.lists[1]) for _ in range(2)]
    for m in waiting:
        m.status = MailingStatus.AWAITING_APPROVAL
    session.commit()
    first, second = (review_url("", KEYS, m.id) for m in waiting)
    page = served.client.get(first)
    assert page.status_code == 200
    assert "<b>owner</b> asks <b>sender</b>" in page.text
    assert "<i>sender-extra</i>" in page.text
    session.commit()
    assert session.get(Mailing, waiting[0].id).status == MailingStatus.AWAITING_APPROVAL  # type: ignore[union-attr]
    assert served.client.post(first, data={"action": "approve"}).status_code == 200
    assert served.client.post(first, data={"action": "decline"}).status_code == 409
    declined = served.client.post(second, data={"action": "decline", "reason": "full week"})
    assert declined.status_code == 200
    assert served.client.post(second, data={"action": "maybe"}).status_code == 400
    session.commit()
    session.expire_all()
    assert [session.get(Mailing, m.id).status for m in waiting] == [  # type: ignore[union-attr]
        MailingStatus.APPROVED,
        MailingStatus.DECLINED,
    ]
    assert session.get(Mailing, waiting[1].id).review_note == "full week"  # type: ignore[union-attr]
    # A delivery's token does not open a review page, nor does a tampered one.
    click = KEYS.sign(served.hub.mailing.id, served.deliveries["reader1@mail.example"], 0)
    assert served.client.get(f"/review/{click}").status_code == 404
    assert served.client.post(first[:-2], data={"action": "approve"}).status_code == 404
