from datetime import datetime, timezone

from fetcher.api import signing


def test_v3_official_vector() -> None:
    headers = {
        "host": "ecs.cn-shanghai.aliyuncs.com",
        "x-acs-action": "RunInstances",
        "x-acs-version": "2014-05-26",
        "x-acs-date": "2023-10-26T10:22:32Z",
        "x-acs-signature-nonce": "3156853299f313e23d1673dc12e1703d",
        "x-acs-content-sha256": signing.sha256_hex(b""),
    }
    query = {
        "ImageId": "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
        "RegionId": "cn-shanghai",
    }
    canonical = signing.v3_canonical_request(
        "POST", "/", query, headers, headers.keys(), headers["x-acs-content-sha256"]
    )
    assert signing.sha256_hex(canonical.encode()) == (
        "7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
    )
    assert signing.v3_signature("YourAccessKeySecret", canonical) == (
        "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
    )


def test_v3_sign_produces_the_vector() -> None:
    out = signing.v3_sign(
        method="POST",
        host="ecs.cn-shanghai.aliyuncs.com",
        action="RunInstances",
        version="2014-05-26",
        query={
            "ImageId": "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
            "RegionId": "cn-shanghai",
        },
        body=b"",
        access_key_id="YourAccessKeyId",
        access_key_secret="YourAccessKeySecret",
        security_token=None,
        now=datetime(2023, 10, 26, 10, 22, 32, tzinfo=timezone.utc),
        nonce="3156853299f313e23d1673dc12e1703d",
    )
    assert out["Authorization"] == (
        "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;"
        "x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,"
        "Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
    )
    parsed = signing.V3Authorization.parse(out["Authorization"])
    assert parsed is not None and parsed.access_key_id == "YourAccessKeyId"
    assert parsed.signed_headers[0] == "host"


def test_v3_sts_token_is_signed() -> None:
    kwargs = dict(
        method="POST", host="h", action="A", version="v", query={}, body=b"",
        access_key_id="STS.id", access_key_secret="s",
        now=datetime(2024, 1, 1, tzinfo=timezone.utc), nonce="n",
    )
    with_token = signing.v3_sign(security_token="tok", **kwargs)  # type: ignore[arg-type]
    without = signing.v3_sign(security_token=None, **kwargs)  # type: ignore[arg-type]
    assert with_token["x-acs-security-token"] == "tok"
    assert "x-acs-security-token" in with_token["Authorization"]
    assert with_token["Authorization"] != without["Authorization"]


def test_v3_repeated_headers_sorted_and_joined() -> None:
    canonical = signing.v3_canonical_request(
        "GET", "/", {}, [("x-acs-b", "2"), ("X-Acs-B", " 1 "), ("host", "h")],
        ["host", "x-acs-b"], "e3b0",
    )
    assert "x-acs-b:1,2\n" in canonical


def test_percent_encoding_rules() -> None:
    assert signing.percent_encode("a b*c~d/é") == "a%20b%2Ac~d%2F%C3%A9"
    assert signing.canonical_query({"b": "", "a": "x y"}) == "a=x%20y&b="


def test_v1_official_vector() -> None:
    params = {
        "AccessKeyId": "testid",
        "Action": "DescribeDedicatedHosts",
        "Format": "JSON",
        "RegionId": "cn-beijing",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": "edb2b34af0af9a6d14deaf7c1a5315eb",
        "SignatureVersion": "1.0",
        "Timestamp": "2023-03-13T08:34:30Z",
        "Version": "2014-05-26",
    }
    assert signing.v1_signature("testsecret", "GET", params) == "9NaGiOspFP5UPcwX8Iwt2YJXXuk="


def test_v1_classic_vector() -> None:
    params = {
        "AccessKeyId": "testid",
        "Action": "DescribeRegions",
        "Format": "XML",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
        "SignatureVersion": "1.0",
        "Timestamp": "2016-02-23T12:46:24Z",
        "Version": "2014-05-26",
    }
    assert signing.v1_signature("testsecret", "GET", params) == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="


def test_v1_sign_adds_common_parameters_and_token() -> None:
    out = signing.v1_sign(
        method="POST", action="DescribeBackups", version="2014-08-15",
        params={"DBInstanceId": "rm-1"}, access_key_id="id", access_key_secret="sec",
        security_token="tok", now=datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc),
        nonce="abc",
    )
    assert out["SecurityToken"] == "tok"
    assert out["Timestamp"] == "2024-05-06T07:08:09Z"
    assert out["Format"] == "JSON"
    assert out["Signature"] == signing.v1_signature("sec", "POST", out)
