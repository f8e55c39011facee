"""``aws`` provider: EC2 instances through boto3 (on-demand, or spot with ``spot``/``spotPrice``).

Instances boot the cloud-init script (``bootstrap.user_data``), carry the cluster tag
(``clusterodm:cluster``), a ``Name`` and the config's ``tags`` (``"key,value"`` or ``"name"``).
``endpoint`` points boto3 at another EC2 API (tests use moto's server). boto3 runs in a thread
with its own connect/read timeouts and bounded retries; its errors become ``CloudError`` here.
"""

from __future__ import annotations

import asyncio
from typing import Any

from clusterodm.autoscale.base import Machine, MachineSpec
from clusterodm.autoscale.config import AsrConfig
from clusterodm.errors import CloudError

TAG = "clusterodm:cluster"
TIMEOUT_S = 20.0


def _sdk() -> tuple[Any, Any, tuple[type[Exception], ...]]:
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise CloudError("the aws provider needs boto3: pip install 'clusterodm[aws]'") from None
    return boto3, Config, (BotoCoreError, ClientError)


class AwsProvider:
    name = "aws"

    def __init__(self, config: AsrConfig) -> None:
        self.config = config
        self._boto3, self._cfg, self._errors = _sdk()
        self._clients: dict[str, Any] = {}

    def _ec2(self, region: str) -> Any:
        if region not in self._clients:
            self._clients[region] = self._boto3.client(
                "ec2",
                region_name=region,
                endpoint_url=self.config.get("endpoint") or None,
                aws_access_key_id=self.config.get("accessKey"),
                aws_secret_access_key=self.config.get("secretKey"),
                config=self._cfg(
                    connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S, retries={"max_attempts": 3}
                ),
            )
        return self._clients[region]

    async def _call(self, region: str, method: str, **kwargs: Any) -> Any:
        def call() -> Any:
            return getattr(self._ec2(region), method)(**kwargs)

        try:
            return await asyncio.to_thread(call)
        except self._errors as e:
            raise CloudError(f"EC2 {method} in {region}: {e}") from None

    def run_args(self, spec: MachineSpec) -> dict[str, Any]:
        c = self.config
        tags = [{"Key": TAG, "Value": spec.cluster_tag}, {"Key": "Name", "Value": spec.name}]
        for t in c.get("tags", []) or []:
            key, _, value = str(t).partition(",")
            tags.append({"Key": key, "Value": value})
        args: dict[str, Any] = {
            "ImageId": c.get("ami"),
            "InstanceType": spec.size.slug,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": spec.user_data,
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}],
            "Monitoring": {"Enabled": bool(c.get("monitoring"))},
            "InstanceInitiatedShutdownBehavior": "terminate",
        }
        group = str(c.get("securityGroup", ""))
        key = "SecurityGroupIds" if group.startswith("sg-") else "SecurityGroups"
        args[key] = [group]
        if spec.size.storage_gb:
            args["BlockDeviceMappings"] = [
                {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": spec.size.storage_gb}}
            ]
        if c.get("subnet"):
            args["SubnetId"] = c.get("subnet")
        if c.get("zone"):
            args["Placement"] = {"AvailabilityZone": spec.region + str(c.get("zone"))}
        if c.get("iamrole"):
            args["IamInstanceProfile"] = {"Name": c.get("iamrole")}
        if c.get("sshKey.name"):
            args["KeyName"] = c.get("sshKey.name")
        if c.get("spot"):
            spot: dict[str, Any] = {"SpotInstanceType": "one-time"}
            if spec.size.spot_price:
                spot["MaxPrice"] = str(spec.size.spot_price)
            args["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
        return args

    async def start(self) -> None:
        await self._call(self.config.regions[0], "describe_instances", MaxResults=5)

    async def create(self, spec: MachineSpec) -> Machine:
        answer = await self._call(spec.region, "run_instances", **self.run_args(spec))
        instance = answer["Instances"][0]
        return Machine(instance["InstanceId"], spec.name, spec.region, "", spec.port)

    async def locate(self, machine: Machine) -> Machine:
        answer = await self._call(machine.region, "describe_instances", InstanceIds=[machine.id])
        found = [i for r in answer.get("Reservations", []) for i in r.get("Instances", [])]
        if not found or found[0]["State"]["Name"] in ("shutting-down", "terminated"):
            raise CloudError(f"instance {machine.id} is gone")
        inst = found[0]
        if self.config.get("usePrivateAddress"):
            host = inst.get("PrivateIpAddress", "")
        else:
            host = inst.get("PublicIpAddress", "")
        if inst["State"]["Name"] != "running":
            host = ""
        return Machine(machine.id, machine.name, machine.region, host or "", machine.port)

    async def destroy(self, machine: Machine) -> None:
        try:
            await self._call(
                machine.region or self.config.regions[0],
                "terminate_instances",
                InstanceIds=[machine.id],
            )
        except CloudError as e:
            if "InvalidInstanceID.NotFound" not in e.message:
                raise

    async def list_tagged(self, cluster_tag: str) -> list[Machine]:
        found = []
        for region in dict.fromkeys(self.config.regions):
            answer = await self._call(
                region,
                "describe_instances",
                Filters=[
                    {"Name": f"tag:{TAG}", "Values": [cluster_tag]},
                    {"Name": "instance-state-name", "Values": ["pending", "running", "stopped"]},
                ],
            )
            for r in answer.get("Reservations", []):
                for inst in r.get("Instances", []):
                    tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                    found.append(Machine(inst["InstanceId"], tags.get("Name", ""), region))
        return found

    def describe(self, spec: MachineSpec) -> list[str]:
        args = {k: v for k, v in self.run_args(spec).items() if k != "UserData"}
        return [f"ec2 run_instances in {spec.region}: {args}"]

    async def close(self) -> None:
        self._clients.clear()
