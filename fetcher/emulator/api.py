"""The RDS API half of the emulator: signature checks, DescribeBackups, DescribeDBInstances.

Requests are accepted the ways real clients send them: GET with a query string, POST with
the parameters in the query string (the official SDK), POST with a form body, POST with a
JSON body. Both signature versions are verified with the same pure functions the client
signs with, rebuilding V3's canonical request from the headers the client says it signed.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from aiohttp import web

from fetcher.api import signing
from fetcher.emulator.dataset import Credential, DataSet, EmuBackup, EmuInstance, EmuObject

API_VERSION = "2014-08-15"
MAX_SKEW_SECONDS = 15 * 60
_API_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}Z$")


class ApiFailure(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class ApiFaults:
    """Fault knobs of the API half, set by tests."""

    throttle_next: int = 0
    throttle_code: str = "Throttling.User"
    throttle_status: int = 400
    throttle_retry_after_ms: int | None = None
    fail_next: int = 0
    fail_status: int = 503
    fail_code: str = "ServiceUnavailable"
    delay_seconds: float = 0.0


@dataclass(frozen=True)
class ApiCall:
    action: str
    method: str
    signature: str  # "v3", "v1" or "" when unsigned
    params: dict[str, str]
    status: int
    code: str


@dataclass
class ApiState:
    faults: ApiFaults = field(default_factory=ApiFaults)
    calls: list[ApiCall] = field(default_factory=list)
    nonces: dict[str, float] = field(default_factory=dict)


_V1_COMMON = {
    "Action", "Version", "Format", "AccessKeyId", "SignatureMethod", "SignatureVersion",
    "SignatureNonce", "Timestamp", "Signature", "SecurityToken", "SignatureType", "RegionId",
}


def _parse_time(value: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class RdsApi:
    """aiohttp handler for the RDS API endpoint."""

    def __init__(
        self,
        data: DataSet,
        sign_url: Callable[[EmuObject, bool], str],
        state: ApiState,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.data = data
        self.sign_url = sign_url
        self.state = state
        self.clock = clock
        self._filtered: dict[tuple[Any, ...], list[EmuBackup]] = {}

    # ------------------------------------------------------------------ plumbing

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4()).upper()
        action, signature, params, method = "", "", {}, request.method
        xml = False
        try:
            if method not in ("GET", "POST"):
                raise ApiFailure(405, "UnsupportedHTTPMethod", "Only GET and POST are supported.")
            body = await request.read()
            query = parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True)
            body_params = self._body_params(request, body)
            params = {**dict(query), **body_params}
            auth = request.headers.get("Authorization", "")
            if auth.startswith(signing.V3_ALGORITHM):
                signature = "v3"
                action = self._verify_v3(request, query, body)
            elif "Signature" in params:
                signature = "v1"
                xml = params.get("Format", "XML").lower() != "json"
                action = self._verify_v1(method, params)
            else:
                raise ApiFailure(
                    400, "MissingParameter", "The request has no signature (Authorization or Signature)."
                )
            await self._inject_faults()
            doc = self._dispatch(action, params)
            doc["RequestId"] = request_id
            self._record(action, method, signature, params, 200, "")
            return self._respond(200, doc, xml)
        except ApiFailure as failure:
            self._record(action, method, signature, params, failure.status, failure.code)
            doc = {
                "RequestId": request_id,
                "HostId": request.host,
                "Code": failure.code,
                "Message": failure.message,
                "Recommend": f"https://api.aliyun.com/troubleshoot?q={failure.code}",
            }
            response = self._respond(failure.status, doc, xml)
            if failure.code.startswith("Throttling") and self.state.faults.throttle_retry_after_ms:
                response.headers["x-acs-retry-after"] = str(self.state.faults.throttle_retry_after_ms)
            return response

    def _record(
        self, action: str, method: str, signature: str, params: dict[str, str], status: int, code: str
    ) -> None:
        visible = {k: v for k, v in params.items() if k not in _V1_COMMON or k == "RegionId"}
        self.state.calls.append(ApiCall(action, method, signature, visible, status, code))

    @staticmethod
    def _respond(status: int, doc: dict[str, Any], xml: bool) -> web.Response:
        if xml:
            return web.Response(status=status, body=_to_xml(doc), content_type="text/xml")
        return web.Response(
            status=status, body=json.dumps(doc).encode(), content_type="application/json"
        )

    @staticmethod
    def _body_params(request: web.Request, body: bytes) -> dict[str, str]:
        if not body:
            return {}
        ctype = request.content_type
        if ctype == "application/x-www-form-urlencoded":
            return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if ctype == "application/json":
            try:
                doc = json.loads(body)
            except ValueError:
                raise ApiFailure(400, "InvalidParameter", "The JSON body is not valid.") from None
            if not isinstance(doc, dict):
                raise ApiFailure(400, "InvalidParameter", "The JSON body must be an object.")
            return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in doc.items()}
        return {}

    async def _inject_faults(self) -> None:
        faults = self.state.faults
        if faults.delay_seconds:
            await asyncio.sleep(faults.delay_seconds)
        if faults.throttle_next > 0:
            faults.throttle_next -= 1
            raise ApiFailure(
                faults.throttle_status, faults.throttle_code, "Request was denied due to user flow control."
            )
        if faults.fail_next > 0:
            faults.fail_next -= 1
            raise ApiFailure(
                faults.fail_status, faults.fail_code, "The request has failed due to a temporary failure of the server."
            )

    # ------------------------------------------------------------------ signatures

    def _credential(self, key_id: str) -> Credential:
        for cred in self.data.credentials:
            if cred.access_key_id == key_id:
                return cred
        raise ApiFailure(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")

    def _check_time_and_nonce(self, stamp: str, nonce: str) -> None:
        moment = _parse_time(stamp) if stamp else None
        if moment is None:
            raise ApiFailure(400, "InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted.")
        now = self.clock()
        if abs(moment.timestamp() - now) > MAX_SKEW_SECONDS:
            raise ApiFailure(400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")
        if not nonce:
            raise ApiFailure(400, "MissingSignatureNonce", "SignatureNonce is mandatory for this action.")
        # Forget nonces once their timestamp could no longer pass the skew check.
        for old, seen in list(self.state.nonces.items()):
            if now - seen > 2 * MAX_SKEW_SECONDS:
                del self.state.nonces[old]
        if nonce in self.state.nonces:
            raise ApiFailure(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
        self.state.nonces[nonce] = now

    @staticmethod
    def _check_token(cred: Credential, token: str | None) -> None:
        if cred.security_token and not token:
            raise ApiFailure(400, "MissingSecurityToken", "SecurityToken is mandatory for this access key.")
        if cred.security_token and token != cred.security_token:
            raise ApiFailure(400, "InvalidSecurityToken.Mismatch", "Specified SecurityToken mismatch with the AccessKey.")
        if not cred.security_token and token:
            raise ApiFailure(400, "InvalidSecurityToken.Malformed", "Specified SecurityToken is malformed.")

    def _verify_v3(self, request: web.Request, query: list[tuple[str, str]], body: bytes) -> str:
        auth = signing.V3Authorization.parse(request.headers.get("Authorization", ""))
        if auth is None:
            raise ApiFailure(400, "IncompleteSignature", "The request signature does not conform to Aliyun standards.")
        cred = self._credential(auth.access_key_id)
        signed = {h.lower() for h in auth.signed_headers}
        present = {k.lower() for k in request.headers}
        must = {"host", "x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256"}
        must |= {h for h in present if h.startswith("x-acs-")}
        if not must <= signed:
            missing = ", ".join(sorted(must - signed))
            raise ApiFailure(400, "IncompleteSignature", f"The request signature does not sign: {missing}.")
        if not signed <= present:
            raise ApiFailure(400, "IncompleteSignature", "A signed header is not in the request.")
        payload_hash = request.headers.get("x-acs-content-sha256", "")
        if payload_hash != signing.sha256_hex(body):
            raise ApiFailure(400, "SignatureDoesNotMatch", "x-acs-content-sha256 does not match the body.")
        header_pairs = [(k, v) for k, v in request.headers.items() if k.lower() in signed]
        canonical = signing.v3_canonical_request(
            request.method, request.rel_url.raw_path, query, header_pairs, signed, payload_hash
        )
        if signing.v3_signature(cred.access_key_secret, canonical) != auth.signature:
            raise ApiFailure(400, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation.")
        self._check_token(cred, request.headers.get("x-acs-security-token"))
        self._check_time_and_nonce(
            request.headers.get("x-acs-date", ""), request.headers.get("x-acs-signature-nonce", "")
        )
        if request.headers.get("x-acs-version") != API_VERSION:
            raise ApiFailure(400, "InvalidVersion", "Specified parameter Version is not valid.")
        return request.headers.get("x-acs-action", "")

    def _verify_v1(self, method: str, params: dict[str, str]) -> str:
        for name in ("AccessKeyId", "SignatureMethod", "SignatureVersion", "Timestamp", "Action", "Version"):
            if not params.get(name):
                raise ApiFailure(400, f"Missing{name}", f"{name} is mandatory for this action.")
        cred = self._credential(params["AccessKeyId"])
        if params["SignatureMethod"] != signing.V1_METHOD or params["SignatureVersion"] != "1.0":
            raise ApiFailure(400, "InvalidSignatureMethod", "Specified signature method is not supported.")
        expected = signing.v1_signature(cred.access_key_secret, method, params)
        if expected != params["Signature"]:
            raise ApiFailure(400, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation.")
        self._check_token(cred, params.get("SecurityToken"))
        self._check_time_and_nonce(params["Timestamp"], params.get("SignatureNonce", ""))
        if params["Version"] != API_VERSION:
            raise ApiFailure(400, "InvalidVersion", "Specified parameter Version is not valid.")
        return params["Action"]

    # ------------------------------------------------------------------ actions

    def _dispatch(self, action: str, params: dict[str, str]) -> dict[str, Any]:
        if action == "DescribeBackups":
            return self.describe_backups(params)
        if action == "DescribeDBInstances":
            return self.describe_instances(params)
        raise ApiFailure(404, "InvalidAction.NotFound", "Specified api is not found, please check your url and method.")

    @staticmethod
    def _paging(params: dict[str, str]) -> tuple[int, int]:
        size_text = params.get("PageSize", "30") or "30"
        if size_text not in ("30", "50", "100"):
            raise ApiFailure(403, "InvalidMaxRecordsPerPage.Malformed", "Specified record number is not valid.")
        number_text = params.get("PageNumber", "1") or "1"
        if not number_text.isdigit() or int(number_text) < 1:
            raise ApiFailure(400, "InvalidPageNumbers.Malformed", "Specified page number is not valid.")
        return int(size_text), int(number_text)

    def _instance(self, params: dict[str, str]) -> EmuInstance:
        iid = params.get("DBInstanceId", "")
        if not iid:
            raise ApiFailure(400, "MissingDBInstanceId", "DBInstanceId is mandatory for this action.")
        inst = self.data.instances.get(iid)
        if inst is None:
            raise ApiFailure(400, "InvalidDBInstanceId.NotFound", "The DBInstanceId provided does not exist in records.")
        return inst

    def _filter(self, inst: EmuInstance, params: dict[str, str]) -> list[EmuBackup]:
        start = params.get("StartTime")
        end = params.get("EndTime")
        if start is not None and not _API_TIME.match(start):
            raise ApiFailure(400, "InvalidStartTime.Format", "Specified start time is not valid.")
        if end is not None and not _API_TIME.match(end):
            raise ApiFailure(400, "InvalidEndTime.Format", "Specified end time is not valid.")
        start_dt = _parse_time(start) if start else None
        end_dt = _parse_time(end) if end else None
        if (start and start_dt is None) or (end and end_dt is None):
            code = "InvalidStartTime.Format" if start and start_dt is None else "InvalidEndTime.Format"
            raise ApiFailure(400, code, "Specified time is not valid.")
        if start_dt and end_dt and end_dt <= start_dt:
            raise ApiFailure(400, "InvalidParameterCombination", "The end time must be greater than the start time")
        for name, allowed in (
            ("BackupStatus", ("Success", "Failed")),
            ("BackupMode", ("Automated", "Manual")),
            ("BackupType", ("FullBackup", "IncrementalBackup")),
        ):
            value = params.get(name)
            if value is not None and value not in allowed:
                raise ApiFailure(400, f"Invalid{name}.Malformed", f"Specified parameter {name} is not valid.")
        key = (
            inst.instance_id, id(inst.backups), len(inst.backups), params.get("BackupId"),
            params.get("BackupStatus"), params.get("BackupMode"), params.get("BackupType"),
            start, end, params.get("ResourceGroupId"),
        )
        cached = self._filtered.get(key)
        if cached is not None:
            return cached
        out = []
        for b in inst.backups:
            f = b.fields
            if params.get("BackupId") and str(f.get("BackupId")) != params["BackupId"]:
                continue
            if params.get("BackupStatus") and f.get("BackupStatus") != params["BackupStatus"]:
                continue
            if params.get("BackupMode") and f.get("BackupMode") != params["BackupMode"]:
                continue
            if params.get("BackupType") and f.get("BackupType") != params["BackupType"]:
                continue
            if params.get("ResourceGroupId") and f.get("ResourceGroupId") != params["ResourceGroupId"]:
                continue
            if start_dt or end_dt:
                moment = _parse_time(str(f.get("BackupStartTime") or ""))
                if moment is None:
                    continue
                if start_dt and moment < start_dt:
                    continue
                if end_dt and moment > end_dt:
                    continue
            out.append(b)
        if len(self._filtered) > 256:
            self._filtered.clear()
        self._filtered[key] = out
        return out

    def render_backup(self, backup: EmuBackup) -> dict[str, Any]:
        doc = dict(backup.fields)
        whole = backup.whole
        if whole is not None:
            doc.setdefault("BackupSize", whole.size)
            if "Checksum" not in backup.fields:
                doc["Checksum"] = str(whole.crc64)
            doc["BackupDownloadURL"] = self.sign_url(whole, False)
            doc["BackupIntranetDownloadURL"] = self.sign_url(whole, True)
        else:
            doc.setdefault("BackupDownloadURL", "")
            doc.setdefault("BackupIntranetDownloadURL", "")
        if doc.get("Checksum", "") is None:
            del doc["Checksum"]
        if backup.databases:
            doc["BackupDownloadLinkByDB"] = {
                "BackupDownloadLinkByDB": [
                    {
                        "DataBase": o.database,
                        "DownloadLink": self.sign_url(o, False),
                        "IntranetDownloadLink": self.sign_url(o, True),
                    }
                    for o in backup.databases
                ]
            }
        return doc

    def describe_backups(self, params: dict[str, str]) -> dict[str, Any]:
        inst = self._instance(params)
        size, number = self._paging(params)
        matching = self._filter(inst, params)
        page = matching[(number - 1) * size : number * size]
        return {
            "TotalEcsSnapshotSize": 0,
            "PageRecordCount": str(len(page)),
            "TotalRecordCount": str(len(matching)),
            "PageNumber": str(number),
            "Items": {"Backup": [self.render_backup(b) for b in page]},
        }

    def describe_instances(self, params: dict[str, str]) -> dict[str, Any]:
        size, number = self._paging(params)
        region = params.get("RegionId") or self.data.region
        if region != self.data.region:
            instances: list[EmuInstance] = []
        else:
            instances = list(self.data.instances.values())
        page = instances[(number - 1) * size : number * size]
        items = []
        for inst in page:
            item = {
                "DBInstanceStatus": "Running",
                "RegionId": self.data.region,
                "DBInstanceNetType": "Intranet",
                "PayType": "Postpaid",
                **inst.fields,
            }
            items.append(item)
        return {
            "PageRecordCount": len(page),
            "TotalRecordCount": len(instances),
            "PageNumber": number,
            "Items": {"DBInstance": items},
        }


def _to_xml(doc: Any, tag: str = "") -> str:
    """Just enough XML for V1 callers that forgot Format=JSON (the real API's default)."""

    def node(name: str, value: Any) -> str:
        if isinstance(value, dict):
            return f"<{name}>{''.join(node(k, v) for k, v in value.items())}</{name}>"
        if isinstance(value, list):
            return "".join(node(name, v) for v in value)
        text = "" if value is None else escape(str(value))
        return f"<{name}>{text}</{name}>"

    root = tag or ("Error" if "Code" in doc else "Response")
    return '<?xml version="1.0" encoding="UTF-8"?>' + node(root, doc)
