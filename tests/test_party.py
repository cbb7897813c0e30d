"""LAN party, pure parts: the join code, announcements, invites, which party a joiner accepts, guess throttling."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hamachi.crypto.partycode import (
    ONLINE_GUESS_BITS,
    CodeError,
    JoinCode,
    admission_password,
    fingerprint,
    make_code,
    parse_code,
)
from hamachi.proto.party import (
    Announcement,
    AnnouncementError,
    Invite,
    InviteError,
    choose,
    classify_path,
    parse_invite,
)
from hamachi.proto.ratelimit import GuessThrottle

KEY_A = bytes(range(32))
KEY_D = bytes(range(1, 33))


def test_code_known_answer():
    # Fixed vector: secret from b"\x12\x34\x56\x78", key 00..1f (guards the derivation against drift).
    code = make_code(KEY_A, b"\x12\x34\x56\x78")
    assert code.secret == 0x12345678 >> 7
    assert code.fingerprint == fingerprint(code.secret, KEY_A)
    assert str(code) == "28T5C-W5STC"
    assert admission_password(code, KEY_A) == "cda5c9814b73031ff8a0239709a67e5f859f508c3aa67d0694d5e8eeb28639a0"
    assert admission_password(code, KEY_A) == admission_password(parse_code(str(code).lower()), KEY_A)
    assert len(admission_password(code, KEY_A)) == 64


def test_code_binds_the_key_and_the_secret():
    code = make_code(KEY_A, b"\x01\x02\x03\x04")
    assert code.matches(KEY_A)
    assert not code.matches(KEY_D)
    other = JoinCode(code.secret ^ 1, code.fingerprint)
    assert not other.matches(KEY_A)
    assert admission_password(code, KEY_A) != admission_password(other, KEY_A)
    assert admission_password(code, KEY_A) != admission_password(code, KEY_D)
    assert ONLINE_GUESS_BITS == 25


def test_code_parsing_forgives_people():
    code = make_code(KEY_A, b"\xaa\xbb\xcc\xdd")
    text = str(code)
    assert parse_code(text.lower()) == code
    assert parse_code(" " + text.replace("-", " ") + " ") == code
    folded = text.replace("1", "I").replace("0", "O")
    assert parse_code(folded) == code


@pytest.mark.parametrize("bad,why", [("", "10 characters"), ("ABCDE-FGHJ", "10 characters"),
                                     ("ABCDE-FGHJ*", "cannot be part"), ("ABCDE-FGHJKM", "10 characters")])
def test_bad_codes_say_why(bad, why):
    with pytest.raises(CodeError, match=why):
        parse_code(bad)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**25 - 1), st.integers(0, 2**25 - 1))
def test_code_round_trip(secret, fp):
    c = JoinCode(secret, fp)
    assert parse_code(str(c)) == c


def _ann(key=KEY_A, address="10.1.0.11", name="frag", **kw) -> Announcement:
    return Announcement(name, key, address, 7777, **kw)


def test_announcement_txt_round_trip_and_rejects():
    a = _ann(mode="tap", members=3, version="0.1.0", host="alice")
    props = {k.encode(): v.encode() for k, v in a.txt().items()}
    assert Announcement.from_txt(props, "10.1.0.11") == a
    for key, value, why in [(b"v", b"2", "version"), (b"key", b"!!", "base64"), (b"key", b"AAAA", "32 bytes"),
                            (b"port", b"99999", "port"), (b"mode", b"ipx", "mode"), (b"name", b"", "name"),
                            (b"members", b"x", "count"), (b"name", b"\xff", "UTF-8")]:
        with pytest.raises(AnnouncementError, match=why):
            Announcement.from_txt({**props, key: value}, "10.1.0.11")
    with pytest.raises(AnnouncementError):
        Announcement.from_txt({k: v for k, v in props.items() if k != b"key"}, "10.1.0.11")
    with pytest.raises(AnnouncementError):
        Announcement.from_txt(props, "not-an-ip")


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.binary(max_size=8), st.one_of(st.none(), st.binary(max_size=64)), max_size=10))
def test_announcement_decoder_raises_only_its_error(props):
    try:
        Announcement.from_txt(props, "10.0.0.1")
    except AnnouncementError:
        pass


def test_invite_round_trip_and_errors():
    code = make_code(KEY_A, b"\x05\x06\x07\x08")
    inv = Invite(_ann(address="203.0.113.10"), code)
    text = str(inv)
    assert text.startswith("party:frag@203.0.113.10:7777/") and text.endswith(str(code))
    back = parse_invite(text)
    assert back.code == code and back.announcement.server_key == KEY_A and back.announcement.port == 7777
    for bad, why in [("party:frag", "no '@'"), ("party:frag@1.2.3.4:7777/x", "wrong number"),
                     ("party:frag@host:7777/k/c", "not an IP"), ("party:frag@1.2.3.4:0/k/c", "not a port"),
                     (text.replace("/" + str(code), "/XX"), "10 characters"),
                     (text[:40] + text[44:], "damaged"), ("frag@1.2.3.4", "starts with")]:
        with pytest.raises(InviteError, match=why):
            parse_invite(bad)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=120))
def test_invite_parser_raises_only_its_error(text):
    try:
        parse_invite("party:" + text)
    except InviteError:
        pass


def test_choose_refuses_a_rogue_with_the_same_name():
    code = make_code(KEY_A, b"\x09\x0a\x0b\x0c")
    real, rogue = _ann(KEY_A, "10.1.0.11"), _ann(KEY_D, "10.1.0.14")
    other = _ann(KEY_D, "10.1.0.20", name="quake")
    chosen, refused = choose([rogue, real, other], code, "frag")
    assert chosen == real
    assert [r.announcement for r in refused] == [rogue]
    assert "10.1.0.14" in refused[0].reason and "does not match the join code" in refused[0].reason
    # the rogue alone: nothing chosen, and the reason is there
    chosen, refused = choose([rogue], code, "frag")
    assert chosen is None and len(refused) == 1
    # no name: the code picks the party
    chosen, _ = choose([other, rogue, real], code, None)
    assert chosen == real


def test_classify_path():
    lan = [ipaddress.ip_network("10.1.0.0/24")]
    assert classify_path("direct", "10.1.0.12:41641", lan) == "LAN"
    assert classify_path("direct", "203.0.113.11:41641", lan) == "direct"
    assert classify_path("relayed", "relay:ab", lan) == "relay"
    assert classify_path("connecting", None, lan) == "connecting"


def test_guess_throttle_grows_and_resets():
    g = GuessThrottle(free=3, cap=8.0, global_rate=100, global_burst=100)
    now = 0.0
    for _ in range(3):
        assert g.wait("1.2.3.4", now) == 0
        assert g.failed("1.2.3.4", now) == 0
    assert g.failed("1.2.3.4", now) == 1.0
    assert g.wait("1.2.3.4", now) == 1.0
    assert g.wait("5.6.7.8", now) == 0  # another source is not punished
    now = 1.0
    assert g.wait("1.2.3.4", now) == 0
    assert g.failed("1.2.3.4", now) == 2.0
    waits = []
    for _ in range(5):
        now += 100
        waits.append(g.failed("1.2.3.4", now))
    assert waits == [4.0, 8.0, 8.0, 8.0, 8.0]  # capped
    g.succeeded("1.2.3.4")
    assert g.wait("1.2.3.4", now) == 0 and g.failed("1.2.3.4", now) == 0


def test_guess_throttle_global_budget():
    g = GuessThrottle(global_rate=1.0, global_burst=5)
    allowed = sum(g.wait(f"10.0.0.{i}", 0.0) == 0 for i in range(50))
    assert allowed == 5
    assert g.wait("10.0.1.1", 2.0) == 0  # refilled


def test_server_slows_wrong_passwords():
    from tests.test_control_proto import World  # the in-memory server harness

    w = World()
    w.login("alice")
    w.login("bob")
    assert w.ask("alice", "create", network="lan", password="right").ok
    errors = [w.ask("bob", "join", network="lan", password=f"no{i}").error for i in range(4)]
    assert errors[:3] == ["wrong password"] * 3 and errors[3] == "wrong password (next try in 1 s)"
    assert "try again in 1 s" in w.ask("bob", "join", network="lan", password="right").error
    w.now += 1.5
    assert w.ask("bob", "join", network="lan", password="right").ok
