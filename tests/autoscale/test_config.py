"""``--asr`` configuration: placeholders, missing keys and wrong types are refused naming the
key; every provider's example in docs/autoscaling.md is accepted."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from clusterodm.autoscale import load_asr_config, parse_asr_config
from clusterodm.autoscale.config import CHANGEME, PROVIDERS
from clusterodm.config import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "autoscaling.md"
UUID_A = "11111111-2222-4333-8444-555555555555"
UUID_B = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
S3 = {"accessKey": "s3-access", "secretKey": "s3-secret", "endpoint": "s3.example", "bucket": "b"}

MINIMAL: dict[str, dict[str, Any]] = {
    "aws": {"accessKey": "AKIAEXAMPLE", "secretKey": "aws-secret", "securityGroup": "sg-1",
            "s3": {"endpoint": "s3.amazonaws.com", "bucket": "b"}},
    "digitalocean": {"accessToken": "do-token", "s3": S3},
    "hetzner": {"apiToken": "h-token", "s3": S3},
    "scaleway": {"organization": UUID_A, "secretToken": UUID_B, "s3": S3},
    "local": {"command": "run {port}"},
    "slurm": {"command": "run {port}"},
}  # fmt: skip


def minimal(provider: str, **changes: Any) -> dict[str, Any]:
    return {"provider": provider, **json.loads(json.dumps(MINIMAL[provider])), **changes}


def refused(data: Any) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_asr_config(data)
    return str(raised.value)


def docs_examples() -> dict[str, dict[str, Any]]:
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
    examples = [json.loads(b) for b in blocks]
    return {e["provider"]: e for e in examples}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_minimal_config_of_each_provider_is_accepted(provider: str) -> None:
    config = parse_asr_config(minimal(provider))
    assert config.provider == provider and config.sizes and config.regions


def test_every_provider_has_an_example_in_the_docs() -> None:
    assert sorted(docs_examples()) == sorted(PROVIDERS)


@pytest.mark.parametrize(
    ("provider", "expect"),
    [
        ("aws", {"regions": ("us-west-2", "us-east-2"), "machines_limit": 5, "create_retries": 3,
                 "max_runtime_s": 86400.0, "max_upload_time_s": 7200.0}),
        ("digitalocean", {"regions": ("fra1", "ams3"), "machines_limit": 3}),
        ("hetzner", {"regions": ("fsn1", "nbg1"), "machines_limit": 3}),
        ("scaleway", {"regions": ("fr-par-1", "nl-ams-1"), "machines_limit": 3}),
        ("local", {"regions": ("local",), "machines_limit": 2, "s3": None}),
        ("slurm", {"regions": ("local",), "machines_limit": 4, "s3": None}),
    ],
)  # fmt: skip
def test_docs_example_is_accepted(provider: str, expect: dict[str, Any]) -> None:
    config = parse_asr_config(docs_examples()[provider])
    for attr, value in expect.items():
        assert getattr(config, attr) == value, attr
    assert [s.max_images for s in config.sizes] == sorted(s.max_images for s in config.sizes)


@pytest.mark.parametrize(
    ("provider", "key"),
    [
        ("aws", "accessKey"),
        ("aws", "secretKey"),
        ("aws", "securityGroup"),
        ("aws", "s3.bucket"),
        ("aws", "s3.endpoint"),
        ("digitalocean", "accessToken"),
        ("digitalocean", "s3.secretKey"),
        ("hetzner", "apiToken"),
        ("hetzner", "s3.endpoint"),
        ("scaleway", "organization"),
        ("scaleway", "secretToken"),
        ("scaleway", "s3.accessKey"),
        ("local", "command"),
        ("slurm", "command"),
    ],
)
def test_changeme_and_missing_keys_are_refused_naming_the_key(provider: str, key: str) -> None:
    def without(value: Any) -> dict[str, Any]:
        data = minimal(provider)
        top, _, sub = key.partition(".")
        target = data[top] if sub else data
        name = sub or top
        if value is None:
            del target[name]
        else:
            target[name] = value
        return data

    expected = f"you need to set {key} in your configuration"
    assert expected in refused(without(CHANGEME))
    assert expected in refused(without(None))  # falls back to the original's placeholder
    assert expected in refused(without(""))


def test_the_originals_example_with_placeholders_is_refused() -> None:
    original = {"provider": "scaleway", "organization": CHANGEME, "secretToken": CHANGEME,
                "s3": {"accessKey": CHANGEME, "secretKey": CHANGEME, "endpoint": CHANGEME,
                       "bucket": CHANGEME, "ignoreSSL": False},
                "region": "par1", "image": "ubuntu-xenial"}  # fmt: skip
    assert "set organization" in refused(original)
    filled = {**original, "organization": UUID_A, "secretToken": UUID_B, "s3": S3}
    config = parse_asr_config(filled)
    assert config.regions == ("fr-par-1",) and config.get("image") == "ubuntu-xenial"
    assert "set nodeSetupCmd" in refused({**filled, "nodeSetupCmd": CHANGEME})  # any key


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be a JSON object"),
        ({}, "must specify a provider key"),
        ({"provider": "azure"}, "unknown provider 'azure'"),
        (minimal("local", maxRuntime="1h"), "maxRuntime must be a number"),
        (minimal("local", maxUploadTime=True), "maxUploadTime must be a number"),
        (minimal("local", createRetries=1.5), "createRetries must be an integer"),
        (minimal("local", minImages="3"), "minImages must be an integer"),
        (minimal("local", machinesLimit="2"), "machinesLimit must be an integer"),
        (minimal("aws", instanceLimit=2.5), "instanceLimit must be an integer"),
        (minimal("local", onlineTimeout=0), "onlineTimeout must be more than 0"),
        (minimal("local", pollInterval="fast"), "pollInterval must be a number"),
        (minimal("local", dockerImage=5), "dockerImage must be a string"),
        (minimal("local", dockerRegistry="r"), "dockerRegistry must be an object"),
        (minimal("local", imageSizeMapping={}), "imageSizeMapping (array expected)"),
        (minimal("local", imageSizeMapping=[]), "imageSizeMapping (array expected)"),
        (minimal("local", imageSizeMapping=[5]), "imageSizeMapping[0] must be an object"),
        (minimal("local", imageSizeMapping=[{"maxImages": 0, "slug": "s"}]),
         "imageSizeMapping[0].maxImages must be a positive integer"),
        (minimal("local", imageSizeMapping=[{"maxImages": True, "slug": "s"}]),
         "imageSizeMapping[0].maxImages must be a positive integer"),
        (minimal("local", imageSizeMapping=[{"maxImages": 5, "slug": "a"}, {"maxImages": 9}]),
         "imageSizeMapping[1].slug must be a machine size name"),
        (minimal("aws", imageSizeMapping=[{"maxImages": 5, "slug": "t", "storage": -1}]),
         "imageSizeMapping[0].storage must be a positive number"),
        (minimal("aws", imageSizeMapping=[{"maxImages": 5, "slug": "t", "spotPrice": "1"}]),
         "imageSizeMapping[0].spotPrice must be a positive number"),
        (minimal("aws", region=5), "region must be a name or a list of names"),
        (minimal("hetzner", location=[]), "location must be a name or a list of names"),
        (minimal("digitalocean", region=["fra1", 2]), "region must be a name or a list"),
        (minimal("local", s3="bucket"), "you need to set s3.accessKey"),
        (minimal("scaleway", region="fr-par"), "'fr-par' is not a Scaleway zone"),
        (minimal("scaleway", organization="my-org"), "organization must be a Scaleway id"),
        (minimal("scaleway", secretToken="SCWXXXXXXXXXXXXXXXXX"),
         "secretToken must be a Scaleway id"),
        (minimal("scaleway", project=7), "project must be a Scaleway id"),
    ],
)  # fmt: skip
def test_wrong_values_are_refused_naming_the_key(data: Any, message: str) -> None:
    assert message in refused(data)


def test_defaults_overrides_and_derived_values() -> None:
    config = parse_asr_config(
        minimal("aws", region="eu-west-1", minImages=3, dockerGpu=True,
                dockerRegistry={"url": "reg.example", "username": "u", "password": "reg-pass"},
                s3={"endpoint": "s3.amazonaws.com", "bucket": "b", "acl": "private"})
    )  # fmt: skip
    assert config.regions == ("eu-west-1",) and config.min_images == 3 and config.docker_gpu
    assert config.get("ami") == "ami-07b4f3c02c7f83d59"  # the original's default kept
    assert config.get("s3.bucket") == "b" and config.s3 is not None and not config.s3.public
    assert config.registry is not None and config.registry.username == "u"
    assert config.online_timeout_s == 900 and config.teardown_delay_s == 10
    masked = config.mask("aws-secret AKIAEXAMPLE reg-pass s3-keep")
    assert masked == "*** *** *** s3-keep"
    local = parse_asr_config(minimal("local"))
    assert local.machines_limit == 1 and local.online_timeout_s == 30 and local.registry is None


def test_regions_rotate_and_pauses_grow() -> None:
    config = parse_asr_config(minimal("hetzner", location=["fsn1", "nbg1"], createRetryDelay=2))
    assert [config.region_for(a) for a in range(1, 5)] == ["fsn1", "nbg1", "fsn1", "nbg1"]
    assert [config.retry_sleep_s(a) for a in range(1, 6)] == [2, 2, 20, 40, 60]


def test_loading_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "asr.json"
    path.write_text(json.dumps(minimal("local")))
    assert load_asr_config(path).provider == "local"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_asr_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_asr_config(tmp_path / "missing.json")
