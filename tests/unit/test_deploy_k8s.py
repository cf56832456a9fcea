"""deploy/k8s: the manifests parse; the workers are configured only with known TWINSTREAM_*
settings and run real CLI commands as non-root; the KEDA scaler watches the consumer group and
topic the workers use (the settings' defaults), never asks for more consumers than partitions,
and scales down slowly compared with the session timeout. Each check is also shown to fail on a
planted mistake.
"""

from __future__ import annotations

import pytest
import yaml

from tests.unit.test_deploy_checkers import DOCKERFILE, REPO, Dockerfile, command_problems
from twinstream.errors import TwinstreamError
from twinstream.settings import KafkaSettings, Settings, load_settings, setting_specs

K8S = REPO / "deploy" / "k8s"
# A scale-down decision must come long after the rebalance the previous one caused.
MIN_SCALE_DOWN_WINDOW_PER_SESSION_TIMEOUT = 10


def manifests(texts: dict[str, str]) -> tuple[dict[str, list[dict]], list[str]]:
    parsed, problems = {}, []
    for name, text in texts.items():
        try:
            docs = [d for d in yaml.safe_load_all(text) if d]
        except yaml.YAMLError as exc:
            problems.append(f"{name}: not YAML: {str(exc).splitlines()[0]}")
            continue
        for doc in docs:
            if not (doc.get("apiVersion") and doc.get("kind")):
                problems.append(f"{name}: a document without apiVersion and kind")
        parsed[name] = docs
    return parsed, problems


def container_settings(container: dict, configmaps: dict[str, dict], where: str
                       ) -> tuple[Settings | None, list[str]]:
    env: dict[str, str] = {}
    problems = []
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            if name not in configmaps:
                problems.append(f"{where}: envFrom names ConfigMap {name}, which is not here")
            env.update(configmaps.get(name, {}))
    env.update({e["name"]: str(e.get("value", "")) for e in container.get("env", [])})
    known = {spec.env for spec in setting_specs()}
    problems += [f"{where}: {k} is not a twinstream setting" for k in env if k not in known]
    try:
        return load_settings({k: v for k, v in env.items() if k in known}), problems
    except TwinstreamError as exc:
        return None, [*problems, f"{where}: {exc}"]


def k8s_problems(texts: dict[str, str], dockerfile: Dockerfile | None = None) -> list[str]:
    dockerfile = dockerfile or Dockerfile(DOCKERFILE.read_text())
    parsed, problems = manifests(texts)
    docs = [d for name in sorted(parsed) for d in parsed[name]]
    kustomization = next((d for d in docs if d["kind"] == "Kustomization"), None)
    if kustomization is None:
        problems.append("no kustomization.yaml")
    elif set(kustomization.get("resources", [])) != set(parsed) - {"kustomization.yaml"}:
        problems.append(f"kustomization resources {kustomization.get('resources')} are not the "
                        f"manifests here {sorted(set(parsed) - {'kustomization.yaml'})}")
    configmaps = {d["metadata"]["name"]: {k: str(v) for k, v in d.get("data", {}).items()}
                  for d in docs if d["kind"] == "ConfigMap"}

    workloads: dict[str, tuple[Settings, dict]] = {}
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        where = f"{doc['kind']} {doc['metadata']['name']}"
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            problems.append(f"{where}: pod securityContext lacks runAsNonRoot: true")
        for container in pod.get("initContainers", []) + pod["containers"]:
            settings, env_problems = container_settings(container, configmaps, where)
            problems += env_problems
            if container in pod.get("initContainers", []):
                continue
            target = container["image"].rsplit("/", 1)[-1].split(":")[0].removeprefix(
                "twinstream-")
            if target not in dockerfile.by_name:
                problems.append(f"{where}: image {container['image']} is none of ours")
                continue
            files = dockerfile.files(target)
            argv = (container.get("command") or dockerfile.command(target) or []) + container.get(
                "args", [])
            problems += command_problems(argv, files, f"{where}: command")
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if "exec" in container.get(probe, {}):
                    problems += command_problems(container[probe]["exec"]["command"], files,
                                                 f"{where}: {probe}")
            if settings is not None and doc["kind"] == "Deployment":
                workloads[doc["metadata"]["name"]] = (settings, container)

    for doc in docs:
        if doc["kind"] == "ScaledObject":
            problems += scaler_problems(doc, workloads)
    if not any(d["kind"] == "ScaledObject" for d in docs):
        problems.append("no KEDA ScaledObject")
    return problems


def scaler_problems(scaled: dict, workloads: dict[str, tuple[Settings, dict]]) -> list[str]:
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]["name"]
    if target not in workloads:
        return [f"ScaledObject scales {target}, which is not a worker Deployment here"]
    settings, container = workloads[target]
    defaults = KafkaSettings()
    problems = []
    for trigger in spec["triggers"]:
        meta = trigger["metadata"]
        if trigger["type"] != "kafka":
            continue
        for key, field, default in (("consumerGroup", "group", defaults.group),
                                    ("topic", "topic", defaults.topic),
                                    ("bootstrapServers", "bootstrap", None)):
            used = getattr(settings.kafka, field)
            if meta.get(key) != used or (default is not None and used != default):
                problems.append(f"KEDA {key} {meta.get(key)!r}: the workers use {used!r}, the "
                                f"settings' default is {default!r}")
        if not str(meta.get("lagThreshold", "")).isdigit() or int(meta["lagThreshold"]) < 1:
            problems.append(f"KEDA lagThreshold {meta.get('lagThreshold')!r} is not a count")
        if meta.get("offsetResetPolicy") != "earliest":
            problems.append("KEDA offsetResetPolicy must be earliest, as the workers read a "
                            "partition the group never committed from its start")
        if str(meta.get("allowIdleConsumers", "false")).lower() != "false":
            problems.append("KEDA allowIdleConsumers lets replicas exceed the partitions")
    consumers = spec["maxReplicaCount"] * settings.worker.processes
    if consumers > settings.kafka.partitions:
        problems.append(f"maxReplicaCount {spec['maxReplicaCount']} x "
                        f"{settings.worker.processes} process(es) = {consumers} consumers for "
                        f"{settings.kafka.partitions} partitions: the rest would idle")
    window = (spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
              .get("behavior", {}).get("scaleDown", {}).get("stabilizationWindowSeconds", 300))
    timeout_ms = settings.kafka.session_timeout_ms
    if window * 1000 < MIN_SCALE_DOWN_WINDOW_PER_SESSION_TIMEOUT * timeout_ms:
        problems.append(f"scale-down window {window} s is short next to the session timeout "
                        f"({settings.kafka.session_timeout_ms} ms): rebalances would pile up")
    cpu = str(container.get("resources", {}).get("requests", {}).get("cpu", "0"))
    cores = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    if cores < settings.worker.processes:
        problems.append(f"the worker requests {cpu} CPU for {settings.worker.processes} "
                        "consumer process(es): lagThreshold assumes a core each")
    return problems


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(K8S.glob("*.yaml"))}


def test_k8s_manifests_are_consistent_with_the_settings_and_the_cli(texts):
    assert {"worker-deployment.yaml", "keda-scaledobject.yaml"} <= set(texts)
    assert k8s_problems(texts) == []


# --- planted mistakes: each check can fail ----------------------------------------------------

@pytest.mark.parametrize(("file", "old", "new", "expected"), [
    ("keda-scaledobject.yaml", "consumerGroup: twinstream-workers", "consumerGroup: workers",
     "KEDA consumerGroup 'workers'"),
    ("configmap.yaml", "TWINSTREAM_KAFKA_GROUP: twinstream-workers",
     "TWINSTREAM_KAFKA_GROUP: other", "the settings' default is 'twinstream-workers'"),
    ("keda-scaledobject.yaml", "topic: images", "topic: photos", "KEDA topic 'photos'"),
    ("keda-scaledobject.yaml", "maxReplicaCount: 16", "maxReplicaCount: 32",
     "32 consumers for 16 partitions"),
    ("configmap.yaml", 'TWINSTREAM_WORKER_PROCESSES: "1"', 'TWINSTREAM_WORKER_PROCESSES: "2"',
     "32 consumers for 16 partitions"),
    ("configmap.yaml", "TWINSTREAM_WORKER_BATCH:", "TWINSTREAM_WORKER_BATCHSIZE:",
     "TWINSTREAM_WORKER_BATCHSIZE is not a twinstream setting"),
    ("keda-scaledobject.yaml", "name: twinstream-worker\n  pollingInterval",
     "name: worker\n  pollingInterval", "scales worker, which is not"),
    ("keda-scaledobject.yaml", "offsetResetPolicy: earliest", "offsetResetPolicy: latest",
     "offsetResetPolicy must be earliest"),
    ("keda-scaledobject.yaml", 'allowIdleConsumers: "false"', 'allowIdleConsumers: "true"',
     "allowIdleConsumers"),
    ("keda-scaledobject.yaml", 'lagThreshold: "6000"', 'lagThreshold: "lots"',
     "is not a count"),
    ("keda-scaledobject.yaml", "stabilizationWindowSeconds: 300",
     "stabilizationWindowSeconds: 15", "rebalances would pile up"),
    ("worker-deployment.yaml", 'command: ["twinstream", "worker"]',
     'command: ["twinstream", "wrk"]', "not a twinstream command"),
    ("worker-deployment.yaml", '"/opt/twinstream/healthcheck.py", "worker"',
     '"/opt/twinstream/healthcheck.py", "wrk"', "healthcheck.py refuses"),
    ("worker-deployment.yaml", "runAsNonRoot: true", "runAsNonRoot: false", "runAsNonRoot"),
    ("worker-deployment.yaml", 'cpu: "1"', "cpu: 500m", "requests 500m CPU"),
    ("worker-deployment.yaml", "configMapRef: {name: twinstream}\n            - secretRef",
     "configMapRef: {name: twinstreem}\n            - secretRef", "ConfigMap twinstreem"),
    ("kustomization.yaml", "  - train-job.yaml\n", "", "kustomization resources"),
    ("train-job.yaml", "kind: Job", "kind: Job\n  - broken: [", "not YAML"),
])
def test_k8s_checks_catch_planted_mistakes(texts, file, old, new, expected):
    assert old in texts[file], f"{file} changed: {old!r} is gone, update this test"
    problems = k8s_problems({**texts, file: texts[file].replace(old, new, 1)})
    assert any(expected in p for p in problems), problems
