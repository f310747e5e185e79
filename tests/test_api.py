"""The signed API client and the emulator's API half, talking over 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from fetcher.api import signing
from fetcher.api.client import ClientConfig, RdsClient
from fetcher.credentials import Credentials
from fetcher.errors import ApiError, TransportError
from fetcher.filters import BackupFilters, build_filters
from tests.conftest import DEMO_INSTANCE, Harness, backup_doc, one_instance_doc


def creds_of(h: Harness, index: int = 0) -> Credentials:
    c = h.emu.data.credentials[index]
    return Credentials(c.access_key_id, c.access_key_secret, c.security_token)


async def with_client(h: Harness, fn: Any, *, creds: Credentials | None = None, **config: Any) -> Any:
    async with aiohttp.ClientSession() as session:
        client = RdsClient(
            session, creds or creds_of(h),
            ClientConfig(endpoint=h.emu.endpoint, backoff_base=0.01, **config),
        )
        return await fn(client)


def listing(h: Harness, filters: BackupFilters | None = None, **kw: Any) -> list[Any]:
    f = filters or BackupFilters(DEMO_INSTANCE)
    found: list[Any] = asyncio.run(with_client(h, lambda c: c.describe_backups(f), **kw))
    return found


@pytest.mark.parametrize("signature", ["v3", "v1"])
def test_both_signature_versions(harness: Harness, signature: str) -> None:
    found = listing(harness, signature=signature)
    assert [b.backup_id for b in found] == ["900000105", "900000104", "900000103", "900000102", "900000101"]
    call = harness.emu.api_state.calls[-1]
    assert call.signature == signature and call.status == 200 and call.method == "POST"
    assert call.params["PageSize"] == "100" and call.params["RegionId"] == "cn-hangzhou"


@pytest.mark.parametrize("signature", ["v3", "v1"])
def test_sts_token(harness: Harness, signature: str) -> None:
    assert len(listing(harness, creds=creds_of(harness, 1), signature=signature)) == 5
    c = creds_of(harness, 1)
    without = Credentials(c.access_key_id, c.access_key_secret, None)
    with pytest.raises(ApiError) as info:
        listing(harness, creds=without, signature=signature)
    assert info.value.code == "MissingSecurityToken"
    wrong = Credentials(c.access_key_id, c.access_key_secret, "not-the-token")
    with pytest.raises(ApiError, match="InvalidSecurityToken"):
        listing(harness, creds=wrong, signature=signature)


@pytest.mark.parametrize("signature", ["v3", "v1"])
def test_wrong_secret_and_unknown_key(harness: Harness, signature: str) -> None:
    c = creds_of(harness)
    with pytest.raises(ApiError) as info:
        listing(harness, creds=Credentials(c.access_key_id, "wrong-secret"), signature=signature)
    assert info.value.code == "SignatureDoesNotMatch" and info.value.request_id
    with pytest.raises(ApiError) as info:
        listing(harness, creds=Credentials("LTAInobody", "x"), signature=signature)
    assert info.value.code == "InvalidAccessKeyId.NotFound" and info.value.http_status == 404
    # Permanent 4xx: one attempt each, no retries.
    assert len(harness.emu.api_state.calls) == 2


def test_every_filter_reaches_the_api(harness: Harness) -> None:
    f = build_filters(
        instance_id=DEMO_INSTANCE, backup_id="900000105", status="Success", mode="Automated",
        backup_type="FullBackup", start="2026-11-27T00:00Z", end="2026-11-28T00:00Z",
        resource_group="rg-acfmydemo01",
    )
    found = listing(harness, f)
    assert [b.backup_id for b in found] == ["900000105"]
    sent = harness.emu.api_state.calls[-1].params
    for key, value in f.params().items():
        assert sent[key] == value
    assert listing(harness, build_filters(instance_id=DEMO_INSTANCE, status="Failed"))[0].backup_id == "900000103"
    assert [b.backup_id for b in listing(harness, build_filters(instance_id=DEMO_INSTANCE, mode="Manual"))] == [
        "900000103", "900000101"]
    assert [b.backup_id for b in listing(
        harness, build_filters(instance_id=DEMO_INSTANCE, backup_type="IncrementalBackup"))] == ["900000104"]
    assert [b.backup_id for b in listing(
        harness, build_filters(instance_id=DEMO_INSTANCE, start="2026-11-25", end="2026-11-26T23:59Z"))] == [
        "900000103", "900000102"]
    assert listing(harness, build_filters(instance_id=DEMO_INSTANCE, resource_group="rg-other")) == []


def test_paging_reads_every_page_once(make_harness: Any) -> None:
    doc = one_instance_doc([], synthetic={"count": 345, "size": 64})
    h = make_harness(doc)
    found = listing(h, BackupFilters("rm-test0001"))
    ids = [b.backup_id for b in found]
    assert len(ids) == 345 == len(set(ids))
    assert set(ids) == {b.backup_id for b in h.emu.data.instances["rm-test0001"].backups}
    pages = sorted(int(c.params["PageNumber"]) for c in h.emu.api_state.calls)
    assert pages == [1, 2, 3, 4]


def test_paging_survives_a_set_added_while_listing(make_harness: Any) -> None:
    """Newest first: a new set pushes the oldest of page 1 onto page 2, and so on."""
    doc = one_instance_doc([], synthetic={"count": 200, "size": 64})
    h = make_harness(doc)
    inst = h.emu.data.instances["rm-test0001"]
    newest = backup_doc("999999999", size=64, BackupStartTime="2027-01-01T00:00:00Z")
    from fetcher.emulator.dataset import _Builder

    added = _Builder(h.tmp, "b").backup(inst.fields, newest)
    h.emu.api_state.faults.delay_seconds = 0.05
    original = h.emu.api.describe_backups

    def shifting(params: dict[str, str]) -> dict[str, Any]:
        if params.get("PageNumber") == "2" and inst.backups[0] is not added:
            inst.backups.insert(0, added)
        doc: dict[str, Any] = original(params)
        return doc

    h.emu.api.describe_backups = shifting
    ids = [b.backup_id for b in listing(h, BackupFilters("rm-test0001"))]
    assert len(ids) == len(set(ids))
    # Every set that existed when listing began is there (the new one may or may not be).
    assert {str(500000000 + i) for i in range(200)} <= set(ids)


def test_ten_thousand_sets(make_harness: Any) -> None:
    h = make_harness(one_instance_doc([], synthetic={"count": 10_000, "size": 16}))
    began = time.monotonic()
    found = listing(h, BackupFilters("rm-test0001"))
    elapsed = time.monotonic() - began
    assert len({b.backup_id for b in found}) == 10_000
    # 100 full pages, then one more to be sure a set added meanwhile was not pushed past the end.
    assert len(h.emu.api_state.calls) == 101
    print(f"10,000 sets listed in {elapsed:.2f}s")


def test_throttling_then_success(harness: Harness) -> None:
    harness.emu.api_state.faults.throttle_next = 3
    assert len(listing(harness)) == 5
    codes = [c.code for c in harness.emu.api_state.calls]
    assert codes == ["Throttling.User"] * 3 + [""]


def test_throttling_by_code_not_status_and_retry_after(harness: Harness) -> None:
    f = harness.emu.api_state.faults
    f.throttle_next, f.throttle_status, f.throttle_code = 2, 503, "Throttling.Api"
    f.throttle_retry_after_ms = 300
    began = time.monotonic()
    assert len(listing(harness)) == 5
    assert time.monotonic() - began >= 0.55  # two waits of 300 ms, as the server asked


def test_5xx_then_success_and_each_attempt_signed_afresh(harness: Harness) -> None:
    harness.emu.api_state.faults.fail_next = 2
    assert len(listing(harness)) == 5
    assert [c.status for c in harness.emu.api_state.calls] == [503, 503, 200]
    # A reused nonce or timestamp would have been refused: every attempt was signed afresh.
    assert "SignatureNonceUsed" not in [c.code for c in harness.emu.api_state.calls]


def test_retries_are_bounded(harness: Harness) -> None:
    harness.emu.api_state.faults.fail_next = 50
    with pytest.raises(ApiError) as info:
        listing(harness, attempts=4)
    assert info.value.code == "ServiceUnavailable"
    assert len(harness.emu.api_state.calls) == 4


def test_permanent_error_not_retried(harness: Harness) -> None:
    with pytest.raises(ApiError) as info:
        listing(harness, BackupFilters("rm-doesnotexist"))
    assert info.value.code == "InvalidDBInstanceId.NotFound"
    assert "does not exist" in info.value.message and info.value.request_id in info.value.message
    assert len(harness.emu.api_state.calls) == 1


def test_unreachable_endpoint_is_a_transport_error() -> None:
    async def go(client: RdsClient) -> Any:
        return await client.describe_backups(BackupFilters("rm-1"))

    async def run() -> Any:
        async with aiohttp.ClientSession() as session:
            client = RdsClient(session, Credentials("a", "b"), ClientConfig(
                endpoint="http://127.0.0.1:9", backoff_base=0.01, attempts=2, timeout=2))
            return await go(client)

    with pytest.raises(TransportError, match="cannot reach the API"):
        asyncio.run(run())


def test_clock_skew_and_nonce_replay_are_refused(harness: Harness) -> None:
    c = creds_of(harness)

    async def with_fixed(client_kw: dict[str, Any]) -> Any:
        async with aiohttp.ClientSession() as session:
            client = RdsClient(session, c, ClientConfig(endpoint=harness.emu.endpoint, attempts=1), **client_kw)
            return await client.describe_backups(BackupFilters(DEMO_INSTANCE))

    old = lambda: datetime.now(timezone.utc) - timedelta(minutes=20)  # noqa: E731
    with pytest.raises(ApiError, match="InvalidTimeStamp.Expired"):
        asyncio.run(with_fixed({"clock": old}))
    fixed = uuid.uuid4().hex
    asyncio.run(with_fixed({"nonce": lambda: fixed}))
    with pytest.raises(ApiError, match="SignatureNonceUsed"):
        asyncio.run(with_fixed({"nonce": lambda: fixed}))


# ----------------------------------------------------------------------------- raw requests


def _v1_params(h: Harness, **params: str) -> dict[str, str]:
    c = h.emu.data.credentials[0]
    return signing.v1_sign(
        method=params.pop("_method", "GET"), action="DescribeBackups", version="2014-08-15",
        params=params, access_key_id=c.access_key_id, access_key_secret=c.access_key_secret,
        security_token=None, now=datetime.now(timezone.utc), nonce=uuid.uuid4().hex,
    )


async def _raw(method: str, url: str, **kw: Any) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url, **kw) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.text()


def test_request_styles_get_query_post_form_post_json(harness: Harness) -> None:
    base = harness.emu.endpoint + "/"
    q = _v1_params(harness, DBInstanceId=DEMO_INSTANCE)
    status, _, body = asyncio.run(_raw("GET", base + "?" + urlencode(q)))
    assert status == 200 and json.loads(body)["TotalRecordCount"] == "5"
    form = _v1_params(harness, DBInstanceId=DEMO_INSTANCE, _method="POST")
    status, _, body = asyncio.run(_raw("POST", base, data=form))
    assert status == 200 and json.loads(body)["PageNumber"] == "1"
    # V3 with a JSON body: the body's hash is signed.
    c = harness.emu.data.credentials[0]
    payload = json.dumps({"DBInstanceId": DEMO_INSTANCE, "PageSize": "30"}).encode()
    headers = signing.v3_sign(
        method="POST", host=f"127.0.0.1:{harness.emu.api_port}", action="DescribeBackups",
        version="2014-08-15", query={}, body=payload, access_key_id=c.access_key_id,
        access_key_secret=c.access_key_secret, security_token=None,
        now=datetime.now(timezone.utc), nonce=uuid.uuid4().hex,
        extra_headers={"content-type": "application/json"},
    )
    status, _, body = asyncio.run(_raw("POST", base, data=payload, headers=headers))
    assert status == 200, body
    assert json.loads(body)["PageRecordCount"] == "5"
    # The body is covered: change it after signing and the signature no longer holds.
    status, _, body = asyncio.run(_raw("POST", base, data=payload.replace(b"30", b"50"), headers=headers))
    assert status == 400 and "SignatureDoesNotMatch" in body


def test_v1_without_format_answers_xml(harness: Harness) -> None:
    q = _v1_params(harness, DBInstanceId=DEMO_INSTANCE)
    del q["Format"]
    q["Signature"] = signing.v1_signature(harness.emu.data.credentials[0].access_key_secret, "GET", q)
    status, ctype, body = asyncio.run(_raw("GET", harness.emu.endpoint + "/?" + urlencode(q)))
    assert status == 200 and "xml" in ctype and "<BackupId>900000105</BackupId>" in body


@pytest.mark.parametrize(
    "params,code,status",
    [
        ({}, "MissingDBInstanceId", 400),
        ({"DBInstanceId": "rm-none"}, "InvalidDBInstanceId.NotFound", 400),
        ({"DBInstanceId": DEMO_INSTANCE, "StartTime": "2026-11-27"}, "InvalidStartTime.Format", 400),
        ({"DBInstanceId": DEMO_INSTANCE, "EndTime": "yesterday"}, "InvalidEndTime.Format", 400),
        ({"DBInstanceId": DEMO_INSTANCE, "StartTime": "2026-11-27T10:00Z", "EndTime": "2026-11-27T09:00Z"},
         "InvalidParameterCombination", 400),
        ({"DBInstanceId": DEMO_INSTANCE, "PageNumber": "0"}, "InvalidPageNumbers.Malformed", 400),
        ({"DBInstanceId": DEMO_INSTANCE, "PageSize": "10"}, "InvalidMaxRecordsPerPage.Malformed", 403),
    ],
)
def test_seed_error_codes(harness: Harness, params: dict[str, str], code: str, status: int) -> None:
    q = _v1_params(harness, **params)
    got, _, body = asyncio.run(_raw("GET", harness.emu.endpoint + "/?" + urlencode(q)))
    doc = json.loads(body)
    assert got == status and doc["Code"] == code
    assert set(doc) == {"RequestId", "HostId", "Code", "Message", "Recommend"}


def test_unsigned_and_tampered_requests(harness: Harness) -> None:
    got, _, body = asyncio.run(_raw("GET", harness.emu.endpoint + "/?Action=DescribeBackups&DBInstanceId=x"))
    assert got == 400 and json.loads(body)["Code"] == "MissingParameter"
    q = _v1_params(harness, DBInstanceId=DEMO_INSTANCE)
    q["DBInstanceId"] = "rm-bp1demo4pg14"  # changed after signing
    got, _, body = asyncio.run(_raw("GET", harness.emu.endpoint + "/?" + urlencode(q)))
    assert got == 400 and json.loads(body)["Code"] == "SignatureDoesNotMatch"


def test_empty_pages_beyond_the_end(harness: Harness) -> None:
    q = _v1_params(harness, DBInstanceId=DEMO_INSTANCE, PageNumber="9")
    got, _, body = asyncio.run(_raw("GET", harness.emu.endpoint + "/?" + urlencode(q)))
    doc = json.loads(body)
    assert got == 200 and doc["Items"]["Backup"] == [] and doc["TotalRecordCount"] == "5"


# ----------------------------------------------------------------------------- official SDK


@pytest.mark.parametrize("algorithm", [None, "v2"])
def test_official_sdk_lists_backups(harness: Harness, algorithm: str | None) -> None:
    """The official alibabacloud_rds20140815 client, pointed at the emulator."""
    from alibabacloud_rds20140815 import models as rds_models
    from alibabacloud_rds20140815.client import Client
    from alibabacloud_tea_openapi import models as api_models

    c = harness.emu.data.credentials[0]

    def client(secret: str) -> Any:
        config = api_models.Config(
            access_key_id=c.access_key_id, access_key_secret=secret,
            endpoint=f"127.0.0.1:{harness.emu.api_port}", protocol="http", region_id="cn-hangzhou",
        )
        if algorithm:
            config.signature_algorithm = algorithm
        return Client(config)

    req = rds_models.DescribeBackupsRequest(dbinstance_id=DEMO_INSTANCE, page_size=30, backup_status="Success")
    resp = client(c.access_key_secret).describe_backups(req)
    body = resp.body
    assert body.total_record_count == "4"
    assert [b.backup_id for b in body.items.backup] == ["900000105", "900000104", "900000102", "900000101"]
    first = body.items.backup[0]
    assert first.backup_download_link_by_db.backup_download_link_by_db[0].data_base == "shop"
    assert first.checksum == str(harness.emu.find(DEMO_INSTANCE, "900000105").crc64)
    call = harness.emu.api_state.calls[-1]
    assert call.status == 200 and call.signature == ("v1" if algorithm == "v2" else "v3")
    with pytest.raises(Exception) as info:
        client("not-the-secret").describe_backups(req)
    assert "SignatureDoesNotMatch" in str(info.value)
