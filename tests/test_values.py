"""Pure parsing: filters, times, rates, durations, credentials files, API response quirks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fetcher.api.models import parse_backup, parse_backup_page, parse_instance_page
from fetcher.credentials import profile_credentials, resolve
from fetcher.errors import ApiError, CredentialsError, UsageError
from fetcher.filters import build_filters, parse_time
from fetcher.units import human_size, parse_duration, parse_rate


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2026-11-27T16:00Z", "2026-11-27T16:00Z"),
        ("2026-11-27T18:00+02:00", "2026-11-27T16:00Z"),
        ("2026-11-27T10:30:59-05:30", "2026-11-27T16:00Z"),
        ("2026-11-27T16:00:00", "2026-11-27T16:00Z"),
        ("2026-11-27", "2026-11-27T00:00Z"),
        ("2026-11-27T16:00:00.123Z", "2026-11-27T16:00Z"),
    ],
)
def test_times_normalised_to_api_form(text: str, expected: str) -> None:
    f = build_filters(instance_id="rm-1", start=text)
    assert f.start == expected


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01", "27/11/2026", "", "2026-11-27T25:00Z"])
def test_bad_times_name_the_option(bad: str) -> None:
    with pytest.raises(UsageError, match="--start"):
        parse_time(bad, "--start")


def test_end_must_be_later_than_start() -> None:
    with pytest.raises(UsageError, match="--end.*later than --start"):
        build_filters(instance_id="rm-1", start="2026-11-27T16:00Z", end="2026-11-27T16:00:30Z")
    with pytest.raises(UsageError, match="--end"):
        build_filters(instance_id="rm-1", start="2026-11-28", end="2026-11-27")
    ok = build_filters(instance_id="rm-1", start="2026-11-27", end="2026-11-28T08:00+08:00")
    assert (ok.start, ok.end) == ("2026-11-27T00:00Z", "2026-11-28T00:00Z")


def test_filters_map_one_to_one() -> None:
    f = build_filters(
        instance_id="rm-uf6wjk5xxxxxxx", backup_id="321020562", status="success", mode="Manual",
        backup_type="incrementalbackup", start="2026-01-01", end="2026-02-01", resource_group="rg-acfmy1",
    )
    assert f.params() == {
        "DBInstanceId": "rm-uf6wjk5xxxxxxx", "BackupId": "321020562", "BackupStatus": "Success",
        "BackupMode": "Manual", "BackupType": "IncrementalBackup", "StartTime": "2026-01-01T00:00Z",
        "EndTime": "2026-02-01T00:00Z", "ResourceGroupId": "rg-acfmy1",
    }


@pytest.mark.parametrize(
    "kw,option",
    [
        ({"status": "Done"}, "--status"),
        ({"mode": "auto"}, "--mode"),
        ({"backup_type": "Full"}, "--type"),
        ({"backup_id": "1 2"}, "--backup-id"),
        ({"resource_group": "rg/../x"}, "--resource-group"),
    ],
)
def test_bad_filter_values_name_the_option(kw: dict[str, str], option: str) -> None:
    with pytest.raises(UsageError, match=option):
        build_filters(instance_id="rm-1", **kw)
    with pytest.raises(UsageError, match="--instance"):
        build_filters(instance_id="rm 1")


def test_rates_and_durations() -> None:
    assert parse_rate("500K") == 500 * 1024
    assert parse_rate("50M") == 50 << 20
    assert parse_rate("1G") == 1 << 30
    assert parse_rate("1.5M") == int(1.5 * (1 << 20))
    assert parse_rate("2048") == 2048
    for bad in ("fast", "0", "-1M", "5X"):
        with pytest.raises(UsageError, match="--limit-rate"):
            parse_rate(bad)
    assert parse_duration("90m") == 5400
    assert parse_duration("26h") == 26 * 3600
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("1d12h") == 36 * 3600
    for bad in ("", "26", "h", "0m", "3 days"):
        with pytest.raises(UsageError):
            parse_duration(bad)
    assert human_size(2167808) == "2.1 MiB" and human_size(None) == "-" and human_size(12) == "12 B"


# ----------------------------------------------------------------------------- credentials


def _config(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / ".aliyun" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


PROFILES = {
    "current": "prod",
    "profiles": [
        {"name": "prod", "mode": "AK", "access_key_id": "AKprod", "access_key_secret": "SECprod", "region_id": "cn-shanghai"},
        {"name": "sts", "mode": "StsToken", "access_key_id": "STS.x", "access_key_secret": "SECsts", "sts_token": "TOKsts"},
        {"name": "role", "mode": "RamRoleArn", "access_key_id": "AK", "access_key_secret": "S", "ram_role_arn": "acs:ram::1:role/x"},
        {"name": "ecs", "mode": "EcsRamRole", "ram_role_name": "r"},
    ],
}


def test_environment_wins(tmp_path: Path) -> None:
    path = _config(tmp_path, PROFILES)
    env = {"ALIBABA_CLOUD_ACCESS_KEY_ID": "AKenv", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "SECenv",
           "ALIBABA_CLOUD_SECURITY_TOKEN": "TOKenv", "HOME": str(tmp_path)}
    c = resolve(None, env, path)
    assert (c.access_key_id, c.access_key_secret, c.security_token) == ("AKenv", "SECenv", "TOKenv")
    assert "SECenv" not in repr(c) and "TOKenv" not in repr(c)
    with pytest.raises(CredentialsError, match="ALIBABA_CLOUD_ACCESS_KEY_SECRET"):
        resolve(None, {"ALIBABA_CLOUD_ACCESS_KEY_ID": "AK"}, path)


def test_profile_choice_order(tmp_path: Path) -> None:
    path = _config(tmp_path, PROFILES)
    assert resolve(None, {}, path).access_key_id == "AKprod"  # current
    assert resolve(None, {}, path).region == "cn-shanghai"
    assert resolve(None, {"ALIBABA_CLOUD_PROFILE": "sts"}, path).security_token == "TOKsts"
    c = resolve("prod", {"ALIBABA_CLOUD_PROFILE": "sts"}, path)  # explicit beats env
    assert c.access_key_id == "AKprod" and c.security_token is None
    with pytest.raises(CredentialsError, match="'nope' not found.*prod, sts, role, ecs"):
        resolve("nope", {}, path)


@pytest.mark.parametrize("name,mode", [("role", "RamRoleArn"), ("ecs", "EcsRamRole")])
def test_unsupported_modes_are_named(tmp_path: Path, name: str, mode: str) -> None:
    path = _config(tmp_path, PROFILES)
    with pytest.raises(CredentialsError, match=f"mode '{mode}'.*not support"):
        resolve(name, {}, path)


def test_no_credentials_names_both_ways(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError) as info:
        resolve(None, {"HOME": str(tmp_path)}, tmp_path / "missing.json")
    assert "ALIBABA_CLOUD_ACCESS_KEY_ID" in info.value.message
    assert "profile" in info.value.message
    assert info.value.exit_code == 3


def test_broken_config_files(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(CredentialsError, match="cannot read"):
        resolve(None, {}, path)
    with pytest.raises(CredentialsError, match="no sts_token"):
        profile_credentials({"profiles": [{"name": "s", "mode": "StsToken", "access_key_id": "a",
                                            "access_key_secret": "b"}]}, "s", "cfg")
    with pytest.raises(CredentialsError, match="not a list"):
        profile_credentials({"profiles": 3}, None, "cfg")


# ----------------------------------------------------------------------------- response quirks

SEED_SAMPLE = {
    "RequestId": "1A6D328C-84B8-40DC-BF49-6C73984D7494", "TotalEcsSnapshotSize": 0,
    "PageRecordCount": "30", "TotalRecordCount": "100", "PageNumber": "1",
    "Items": {"Backup": [{
        "StorageClass": "0", "Encryption": "{}", "BackupStatus": "Success", "StoreStatus": "Disabled",
        "ConsistentTime": 1576506856, "BackupType": "FullBackup", "CopyOnlyBackup": "0",
        "BackupEndTime": "2019-02-13T12:20:00Z", "MetaStatus": "OK", "BackupInitiator": "System",
        "BackupIntranetDownloadURL": "http://rdsbak-hz-v3.oss-cn-hangzhou-internal.aliyuncs.com/xxxxx",
        "BackupMethod": "Physical", "BackupStartTime": "2019-02-03T12:20:00Z",
        "BackupDownloadURL": "http://rdsbak-hz-v3.oss-cn-hangzhou.aliyuncs.com/xxxxx", "IsAvail": 1,
        "BackupId": "321020562", "HostInstanceID": "5882781", "BackupSize": 2167808,
        "BackupMode": "Automated", "DBInstanceId": "rm-uf6wjk5xxxxxxx", "Checksum": "1835830439**********",
        "BackupDownloadLinkByDB": {"BackupDownloadLinkByDB": [{
            "IntranetDownloadLink": "https://cn-hangzhou-internal.bak.rds.aliyuncs.com/custins53664665/hins18676859_2021072909473127987849.zip?Expires=*****&dbList=tb1",
            "DataBase": "dbs",
            "DownloadLink": "https://cn-hangzhou.bak.rds.aliyuncs.com/custins53664665/hins18676859_2021072909473127987849.zip?Expires=*****&dbList=tb1"}]},
        "ResourceGroupId": "rg-acfmy*****", "Engine": "MySQL", "EngineVersion": "8.0"}]},
}


def test_seed_sample_parses() -> None:
    page = parse_backup_page(SEED_SAMPLE)
    assert (page.page_number, page.page_record_count, page.total_record_count) == (1, 30, 100)
    b = page.items[0]
    assert b.backup_id == "321020562" and b.size == 2167808 and b.is_avail
    assert b.checksum is None  # the sample's masked value is not a CRC64: treated as absent
    assert b.start is not None and b.start.isoformat() == "2019-02-03T12:20:00+00:00"
    assert [d.database for d in b.databases] == ["dbs"]
    assert b.databases[0].internal_url and "-internal" in b.databases[0].internal_url
    assert b.raw is SEED_SAMPLE["Items"]["Backup"][0]  # type: ignore[index]


def test_numbers_as_strings_nulls_and_odd_nesting() -> None:
    raw = {
        "BackupId": 327329803, "BackupSize": "1024", "IsAvail": "0", "Checksum": 42,
        "BackupDownloadURL": None, "BackupIntranetDownloadURL": "", "EngineVersion": 8.0,
        "StorageClass": 1, "BackupStartTime": "2026-11-27T16:00Z",
        "BackupDownloadLinkByDB": {"BackupDownloadLinkByDB": {"DataBase": "solo", "DownloadLink": "http://h/x"}},
    }
    b = parse_backup(raw)
    assert b.backup_id == "327329803" and b.size == 1024 and not b.is_avail and b.checksum == 42
    assert b.public_url is None and b.internal_url is None
    assert b.engine_version == "8" and b.archived
    assert b.start is not None and b.start.minute == 0
    assert [d.database for d in b.databases] == ["solo"]
    bare = parse_backup({"BackupId": "1"})
    assert bare.is_avail and bare.size is None and bare.databases == () and bare.start is None
    assert parse_backup({"BackupId": "2", "BackupDownloadLinkByDB": None}).databases == ()
    assert parse_backup({"BackupId": "3", "BackupDownloadLinkByDB": [{"DataBase": "d"}]}).databases[0].public_url is None


def test_malformed_documents() -> None:
    with pytest.raises(ApiError, match="InvalidResponse"):
        parse_backup_page(["not", "an", "object"])
    with pytest.raises(ApiError, match="no BackupId"):
        parse_backup_page({"Items": {"Backup": [{"BackupSize": 1}]}})
    assert parse_backup_page({"Items": None}).items == ()
    assert parse_backup_page({"Items": {"Backup": None}, "TotalRecordCount": None}).total_record_count == 0
    page = parse_instance_page({"Items": {"DBInstance": [{"DBInstanceId": "rm-1", "DBInstanceType": "Readonly"}]},
                                "TotalRecordCount": 1})
    assert page.items[0].read_only
