import orjson

from tests.conftest import Collector, client_for


async def test_real_client_receives_subscribed_trades(emulator):
    collector = Collector(client_for(emulator, ["T.*"]))
    try:
        await collector.wait_for(lambda got: sum(b'"ev":"T"' in m.encode() for m in got) >= 3)
    finally:
        await collector.close()
    events = [e for m in collector.received for e in orjson.loads(m)]
    assert {e["ev"] for e in events} <= {"T", "status"}
