"""`fetcher verify --deep` on archives fetched from the emulator's restore-drill instance."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Harness, read_manifest

DRILL = "rm-bp1demo4drill"


def test_verify_deep_good_and_damaged_of_each_format(harness: Harness, tmp_path: Path) -> None:
    dest = tmp_path / "drill"
    r = harness.run("fetch", "--dest", str(dest), "--no-progress", "--instance", DRILL)
    assert r.code == 0, r.output  # damaged archives still match their CRC64: the object is damaged
    assert len(read_manifest(dest)["files"]) == 10
    r = harness.run("verify", "--deep", str(dest / "manifest.json"), "--format", "json")
    assert r.code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["problems"] == [] and doc["checked"] == 10
    deep = {Path(d["path"]).name.split("_")[1] + "." + d["path"].split(".", 1)[1]: d for d in doc["deep"]}
    assert len(doc["deep"]) == 10
    for kind in ("tar.gz", "gz", "tar", "zip", "xbstream"):
        good, bad = deep[f"good.{kind}"], deep[f"damaged.{kind}"]
        assert good["structure"] == "ok" and good["detail"] == "", good
        assert bad["structure"] == "damaged" and bad["detail"], bad
    assert deep["good.tar.gz"]["format"] == "tar.gz" and deep["good.xbstream"]["format"] == "xbstream"
    r = harness.run("verify", "--deep", str(dest / "manifest.json"))
    assert r.code == 1
    assert r.stdout.count("structure ok") == 5 and r.stdout.count("damaged:") == 5
    assert "5 damaged archive(s)" in r.stdout


def test_verify_deep_unrecognised_is_not_damage(harness: Harness, tmp_path: Path) -> None:
    dest = tmp_path / "plain"
    r = harness.run("fetch", "--dest", str(dest), "--no-progress", "--instance", "rm-bp1demo4mysql80",
                    "--databases", "shop")
    assert r.code == 0
    r = harness.run("verify", "--deep", str(dest))
    assert r.code == 0, r.output
    assert "format not recognised" in r.stdout
