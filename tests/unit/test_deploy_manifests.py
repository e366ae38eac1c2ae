"""deploy/kubernetes: every overlay rendered (base + overlay, without the kustomize binary: the overlays use
only the subset rendered here, and a test keeps it that way), each object validated against the
Kubernetes JSON schemas (kubernetes-validate, offline), and the cross-references checked: Services,
PodDisruptionBudgets and NetworkPolicies select the pods they mean, ports and probes agree with the
containers, the HPAs target existing Deployments with metrics prometheus-adapter serves, and the Triton
arguments point at repositories and config variants that exist."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from client.server import PROJECT_ROOT  # noqa: E402

DEPLOY = PROJECT_ROOT / "deploy" / "kubernetes"
OVERLAYS = ("saas", "vpc", "onprem")  # production: PostgreSQL + S3-compatible storage, several gateways
ALL_OVERLAYS = OVERLAYS + ("single",)  # + one gateway on SQLite and a persistent volume
KUBERNETES_VERSION = "1.30.0"
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "replicas", "patches"}
CLUSTER_SCOPED = {"Namespace"}
TRITON, GATEWAY = "talkinghead-triton", "talkinghead-gateway"


# ---------------------------------------------------------------- a renderer for the subset the overlays use


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _json_patch(document: dict, operations: list[dict]) -> dict:
    """RFC 6902 add / replace / remove."""
    for operation in operations:
        *parents, last = _pointer(operation["path"])
        node = document
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        op = operation["op"]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op == "add":
                node.insert(index, copy.deepcopy(operation["value"]))
            elif op == "replace":
                node[index] = copy.deepcopy(operation["value"])
            elif op == "remove":
                del node[index]
            else:
                raise AssertionError(f"unsupported JSON patch op {op!r}")
        else:
            if op in ("replace", "remove"):
                assert last in node, f"{op} of missing {operation['path']}"
            if op == "remove":
                del node[last]
            elif op in ("add", "replace"):
                node[last] = copy.deepcopy(operation["value"])
            else:
                raise AssertionError(f"unsupported JSON patch op {op!r}")
    return document


def _pod_specs(document: dict) -> list[dict]:
    if document["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [document["spec"]["template"]["spec"]]
    return []


def _one(documents: list[dict], kind: str, name: str) -> dict:
    (document,) = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return document


def render(directory: Path) -> list[dict]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - KUSTOMIZATION_KEYS
    assert not unsupported, f"{directory}: {sorted(unsupported)} is not rendered by this test; keep to the subset"
    documents: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            documents += render(path)
        else:
            documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        assert set(target) == {"kind", "name"}, target
        matches = [d for d in documents if (d["kind"], d["metadata"]["name"]) == (target["kind"], target["name"])]
        assert len(matches) == 1, f"patch target {target} matches {len(matches)} objects"
        operations = yaml.safe_load(patch["patch"])
        assert isinstance(operations, list), "only JSON 6902 patches are rendered here"
        _json_patch(matches[0], operations)
    for image in kustomization.get("images", []):
        found = 0
        for document in documents:
            for pod in _pod_specs(document):
                for container in pod.get("containers", []) + pod.get("initContainers", []):
                    name, _, tag = container["image"].partition(":")
                    if name == image["name"]:
                        container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
                        found += 1
        assert found, f"image {image['name']} is used by no container"
    for replicas in kustomization.get("replicas", []):
        _one(documents, "Deployment", replicas["name"])["spec"]["replicas"] = replicas["count"]
    if "namespace" in kustomization:
        for document in documents:
            if document["kind"] not in CLUSTER_SCOPED:
                document["metadata"]["namespace"] = kustomization["namespace"]
    return documents


RENDERED = {overlay: render(DEPLOY / "overlays" / overlay) for overlay in ALL_OVERLAYS}


def _objects():
    for overlay, documents in RENDERED.items():
        for document in documents:
            yield pytest.param(document, id=f"{overlay}:{document['kind']}/{document['metadata']['name']}")
    for document in render(DEPLOY / "monitoring"):
        yield pytest.param(document, id=f"monitoring:{document['kind']}/{document['metadata']['name']}")


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _selected_deployments(documents: list[dict], selector: dict) -> list[dict]:
    return [d for d in documents if d["kind"] == "Deployment"
            and _selects(selector, d["spec"]["template"]["metadata"]["labels"])]


def _container_ports(deployment: dict) -> dict[str, int]:
    pod = deployment["spec"]["template"]["spec"]
    return {p["name"]: p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}


def _adapter_rules() -> list[dict]:
    config_map = yaml.safe_load((DEPLOY / "monitoring" / "prometheus-adapter-rules.yaml").read_text())
    return yaml.safe_load(config_map["data"]["config.yaml"])["rules"]


# ---------------------------------------------------------------- schema


@pytest.mark.parametrize("document", list(_objects()))
def test_object_validates_against_the_kubernetes_schema(document):
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_json_patch_subset_follows_rfc_6902():
    document = {"a": {"b": [1, 2]}, "c": 1}
    _json_patch(document, [{"op": "add", "path": "/a/b/-", "value": 3}, {"op": "replace", "path": "/c", "value": 2},
                           {"op": "add", "path": "/a~1x", "value": {"k": "v"}}, {"op": "remove", "path": "/a/b/0"}])
    assert document == {"a": {"b": [2, 3]}, "c": 2, "a/x": {"k": "v"}}
    with pytest.raises(AssertionError):
        _json_patch(document, [{"op": "replace", "path": "/missing", "value": 1}])


# ---------------------------------------------------------------- cross-references, per overlay


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_every_object_has_the_overlay_namespace_and_registry_images(overlay):
    documents = RENDERED[overlay]
    namespaces = [d["metadata"]["name"] for d in documents if d["kind"] == "Namespace"]
    assert namespaces == ["talkinghead"]
    for document in documents:
        if document["kind"] not in CLUSTER_SCOPED:
            assert document["metadata"]["namespace"] == "talkinghead"
        for pod in _pod_specs(document):
            for container in pod["containers"]:
                registry, _, rest = container["image"].partition("/")
                assert rest and "." in registry or ":" in registry, f"{container['image']}: name the registry"


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_services_select_one_deployment_and_its_named_ports(overlay):
    documents = RENDERED[overlay]
    for service in (d for d in documents if d["kind"] == "Service"):
        (deployment,) = _selected_deployments(documents, service["spec"]["selector"])
        ports = _container_ports(deployment)
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{service['metadata']['name']}: no container port {port['targetPort']}"
            assert port["port"] == ports[port["targetPort"]]


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_hpas_target_deployments_with_served_metrics(overlay):
    documents = RENDERED[overlay]
    served = {rule["name"]["as"] for rule in _adapter_rules()}
    for hpa in (d for d in documents if d["kind"] == "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
        deployment = _one(documents, "Deployment", target["name"])
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Pods":
                assert metric["pods"]["metric"]["name"] in served
            else:
                assert metric["type"] == "Resource"
                container = deployment["spec"]["template"]["spec"]["containers"][0]
                assert metric["resource"]["name"] in container["resources"]["requests"]
    triton_hpa = _one(documents, "HorizontalPodAutoscaler", TRITON)
    assert {m["type"] for m in triton_hpa["spec"]["metrics"]} == {"Pods"}  # Triton scales on its queue


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_disruption_budgets_leave_pods_running(overlay):
    documents = RENDERED[overlay]
    budgets = [d for d in documents if d["kind"] == "PodDisruptionBudget"]
    assert {b["metadata"]["name"] for b in budgets} == {TRITON, GATEWAY}
    for budget in budgets:
        (deployment,) = _selected_deployments(documents, budget["spec"]["selector"]["matchLabels"])
        if "minAvailable" in budget["spec"]:
            hpa = _one(documents, "HorizontalPodAutoscaler", deployment["metadata"]["name"])
            assert budget["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a drain would block"
        else:
            assert budget["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_network_policy_lets_only_the_gateway_reach_triton(overlay):
    documents = RENDERED[overlay]
    policy = _one(documents, "NetworkPolicy", TRITON)
    (triton,) = _selected_deployments(documents, policy["spec"]["podSelector"]["matchLabels"])
    assert triton["metadata"]["name"] == TRITON
    ports = _container_ports(triton)
    api_rules = [rule for rule in policy["spec"]["ingress"] if "podSelector" in rule["from"][0]]
    (rule,) = api_rules
    (peer,) = rule["from"]
    assert [d["metadata"]["name"] for d in _selected_deployments(documents, peer["podSelector"]["matchLabels"])] == [
        GATEWAY]
    assert {p["port"] for p in rule["ports"]} == {ports["http"], ports["grpc"]}
    others = [rule for rule in policy["spec"]["ingress"] if rule is not api_rules[0]]
    assert all(p["port"] == ports["metrics"] for rule in others for p in rule["ports"])


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_triton_pod_serves_the_production_configs(overlay):
    documents = RENDERED[overlay]
    triton = _one(documents, "Deployment", TRITON)
    pod = triton["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])
    ports = _container_ports(triton)
    assert {k: int(args[f"{k}-port"]) for k in ("http", "grpc", "metrics")} == ports
    assert triton["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == container["resources"]["limits"]["nvidia.com/gpu"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    volume = {v["name"]: v for v in pod["volumes"]}[mounts["/models"]["name"]]
    claim = _one(documents, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TALKINGHEAD_WEIGHTS"].startswith("/models/")
    assert mounts["/dev/shm"]["name"] in {v["name"] for v in pod["volumes"] if v.get("emptyDir", {}).get("medium")}


def _image_copies() -> dict[str, Path]:
    """Folders deploy/docker/triton.Dockerfile copies into the image: path in the image -> folder in the checkout."""
    dockerfile = (PROJECT_ROOT / "deploy" / "docker" / "triton.Dockerfile").read_text()
    workdir = re.search(r"^WORKDIR (\S+)", dockerfile, re.M).group(1)
    return {f"{workdir}/{dest}": PROJECT_ROOT / source
            for source, dest in re.findall(r"^COPY (\S+) (\S+)$", dockerfile, re.M)}


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_triton_serves_wan_and_the_qa_models_on_its_gpu(overlay):
    """Issue 19: the Deployment serves the GPU profile. Its --model-config-name picks each model's configs/gpu.pbtxt,
    every model the profile or the pipeline names is in the image's repositories (none on the models volume, whose
    contents are not known here), Wan and every QA model run on KIND_GPU, and the orchestrators' requests fit the
    face models' batches in the configs actually served."""
    from profile_repositories import GPU_PROFILE, ON_THE_GPU

    from client.repository import REPOSITORIES, load_config, parameters, served_config
    from python_backends import spec

    pod = _one(RENDERED[overlay], "Deployment", TRITON)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    names = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--model-config-name=")]
    assert names == [GPU_PROFILE]
    repositories = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--model-repository=")]
    copies = _image_copies()
    assert set(repositories) <= set(copies), f"{sorted(set(repositories) - set(copies))}: not in the image"
    folders = {d.name: d for r in repositories for d in copies[r].iterdir() if (d / "config.pbtxt").exists()}
    served = {model: load_config(served_config(folder, GPU_PROFILE)) for model, folder in folders.items()}
    variants = {p.parent.parent.name for r in REPOSITORIES for p in r.glob(f"*/configs/{GPU_PROFILE}.pbtxt")}
    assert variants and variants <= set(served), f"{sorted(variants - set(served))}: GPU profile models not served"
    assert set(spec.ALL_MODELS) <= set(served), f"{sorted(set(spec.ALL_MODELS) - set(served))}: not in the image"
    for model, config in served.items():
        assert config.name == model
        if config.backend == "python":
            assert (folders[model] / "1" / "model.py").is_file(), model
        network = parameters(config).get("network_model")
        assert not network or network in served, f"{model} calls {network}, which is not served"
    kinds = {model: {model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in served[model].instance_group}
             for model in ON_THE_GPU}
    assert kinds == {model: {"KIND_GPU"} for model in ON_THE_GPU}
    assert spec.VIDEO_GENERATOR.name in ON_THE_GPU
    largest = min(served[m.name].max_batch_size for m in (spec.FACE_DETECTOR, spec.FACE_LANDMARKS, spec.FACE_EMBEDDER))
    for orchestrator in (spec.TALKING_HEAD, spec.VIDEO_QA):
        assert int(parameters(served[orchestrator.name])["request_frames"]) <= largest, orchestrator.name
    # On a GPU node, with time to load 14B weights onto it before liveness counts.
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60
    assert container["readinessProbe"]["httpGet"]["path"] == startup["httpGet"]["path"]


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_gateway_reaches_triton_by_its_service(overlay):
    documents = RENDERED[overlay]
    gateway = _one(documents, "Deployment", GATEWAY)
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert _container_ports(gateway) == {"http": 8080}
    env = {e["name"]: e.get("value") for e in container["env"]}
    from client.gateway.settings import ENV_PREFIX, load_settings

    host, port = env[ENV_PREFIX + "TRITON_URL"].split(":")
    assert load_settings(env={ENV_PREFIX + "TRITON_URL": env[ENV_PREFIX + "TRITON_URL"]}).triton_url == f"{host}:{port}"
    service = _one(documents, "Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"}


def test_overlays_differ_where_their_set_ups_differ():
    gateway_types = {o: _one(RENDERED[o], "Service", GATEWAY)["spec"]["type"] for o in OVERLAYS}
    assert gateway_types == {"saas": "ClusterIP", "vpc": "LoadBalancer", "onprem": "NodePort"}
    assert any(d["kind"] == "Ingress" for d in RENDERED["saas"])
    annotations = _one(RENDERED["vpc"], "Service", GATEWAY)["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-scheme"] == "internal"
    egress = _one(RENDERED["vpc"], "NetworkPolicy", "talkinghead-triton-egress")
    assert egress["spec"]["policyTypes"] == ["Egress"] and egress["spec"]["egress"] == []
    ingress = next(d for d in RENDERED["saas"] if d["kind"] == "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == GATEWAY and backend["port"]["name"] == "http"


def _gateway_env(overlay: str) -> dict[str, str]:
    (container,) = _one(RENDERED[overlay], "Deployment", GATEWAY)["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_only_the_saas_gateway_believes_forwarded_addresses_and_only_from_its_ingress():
    """Issue 21: behind the SaaS ingress the gateway must take the client address from X-Forwarded-For (else all
    clients share the controller's address and its failed-authentication limit), and only from the controller:
    the overlay sets the trusted proxies and lets nothing but the ingress namespace reach the gateway."""
    from client.gateway.settings import ENV_PREFIX, load_settings

    trusted = _gateway_env("saas")[ENV_PREFIX + "TRUSTED_PROXIES"]
    assert load_settings(env={ENV_PREFIX + "TRUSTED_PROXIES": trusted}).http.trusted_proxies == tuple(
        part.strip() for part in trusted.split(","))
    policy = _one(RENDERED["saas"], "NetworkPolicy", GATEWAY)
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    assert [p["port"] for p in rule["ports"]] == [8080]
    ingress = next(d for d in RENDERED["saas"] if d["kind"] == "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    # The VPC's internal load balancer forwards TCP; on-prem, only the site knows its proxy's address (the
    # overlay says where to set it): neither believes forwarded headers by default.
    assert all(ENV_PREFIX + "TRUSTED_PROXIES" not in _gateway_env(o) for o in ("vpc", "onprem"))


# ---------------------------------------------------------------- monitoring


def test_adapter_rules_and_helm_values_agree():
    values = yaml.safe_load((DEPLOY / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    assert values["rules"]["custom"] == _adapter_rules()
    assert values["rules"]["default"] is False


TRITON_SERIES = ("nv_inference_pending_request_count", "nv_inference_queue_duration_us", "nv_inference_request_success")


def adapter_series() -> set[str]:
    """Every Triton series the adapter rules read (tests/integration checks them against a live server)."""
    names = set()
    for rule in _adapter_rules():
        names |= set(re.findall(r"\bnv_[a-z_]+", rule["seriesQuery"] + " " + rule["metricsQuery"]))
    return names


def test_adapter_rules_are_per_pod_and_read_triton_series():
    assert adapter_series() == set(TRITON_SERIES)
    for rule in _adapter_rules():
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
        assert re.fullmatch(rule["name"]["matches"], rule["seriesQuery"].split("{")[0])


def backlog_series() -> set[str]:
    """The pipeline's backlog gauges the adapter rules read (tests/integration checks them on a live server)."""
    names = set()
    for rule in _adapter_rules():
        names |= set(re.findall(r"\btalkinghead_[a-z_]+(?=\{)", rule["seriesQuery"] + " " + rule["metricsQuery"]))
    return names


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_triton_scales_on_the_pipelines_backlog_gauges(overlay):
    from python_backends.backlog import GAUGES

    assert backlog_series() == set(GAUGES)  # every gauge the models export is served, and nothing else
    rules = {rule["name"]["as"]: rule for rule in _adapter_rules()}
    triton_hpa = _one(RENDERED[overlay], "HorizontalPodAutoscaler", TRITON)
    for metric in triton_hpa["spec"]["metrics"]:
        rule = rules[metric["pods"]["metric"]["name"]]
        series = rule["seriesQuery"].split("{")[0]
        assert series in GAUGES, f"{metric['pods']['metric']['name']} does not read a backlog gauge"
        assert re.search(r'model(=|=~)"(talking_head|video_generator)', rule["metricsQuery"])


# ---------------------------------------------------------------- the stub watchdog beside tritonserver


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_triton_pod_runs_the_stub_watchdog_as_a_sidecar(overlay):
    from client.cli import build_parser
    from client.stub_watchdog import ADMIN_HEADER, TOKEN_ENV

    triton = _one(RENDERED[overlay], "Deployment", TRITON)
    pod = triton["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    (sidecar,) = pod["initContainers"]
    assert pod["shareProcessNamespace"] is True  # the sidecar sees tritonserver's stub processes in /proc
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: beside tritonserver for the pod's whole life
    assert sidecar["image"] == server["image"]  # the same talkinghead package as the models it reloads
    assert sidecar["command"][0] == "talkinghead"
    args = build_parser().parse_args(sidecar["command"][1:] + sidecar["args"])
    assert args.func.__name__ == "cmd_watchdog"
    assert int(args.http_url.rsplit(":", 1)[1]) == _container_ports(triton)["http"]
    # Explicit model control, the repository API locked with the token of one Secret that both containers read.
    locked = f"model-repository:{ADMIN_HEADER}=$({TOKEN_ENV})"
    for flag in ("--model-control-mode=explicit", "--load-model=*", f"--http-restricted-api={locked}",
                 f"--grpc-restricted-protocol={locked}"):
        assert flag in server["args"], flag
    assert [e["secretRef"] for e in server["envFrom"]] == [e["secretRef"] for e in sidecar["envFrom"]] == [
        {"name": "talkinghead-triton-admin"}]  # not optional: no pod with an open repository API
    assert sidecar["securityContext"]["allowPrivilegeEscalation"] is False
    assert sidecar["securityContext"]["capabilities"]["drop"] == ["ALL"]


# ---------------------------------------------------------------- the gateway's state and credentials


def _gateway(documents: list[dict], tmp_path: Path):
    """The settings the gateway container loads (its ConfigMap's file where --config points, and its env), with
    its container, mounts by path and volumes by name."""
    from client.cli import build_parser
    from client.gateway.settings import load_settings

    gateway = _one(documents, "Deployment", GATEWAY)
    pod = gateway["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["args"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_map = _one(documents, "ConfigMap", volumes[mounts[str(args.config.parent)]["name"]]["configMap"]["name"])
    local = tmp_path / "gateway.toml"
    local.write_text(config_map["data"][args.config.name])
    env = {e["name"]: e["value"] for e in container["env"]}
    return load_settings(local, env=env), container, mounts, volumes


def _volume_at(mounts: dict, volumes: dict, path: Path) -> dict:
    mount = max((m for m in mounts if path == Path(m) or Path(m) in path.parents), key=len)
    return volumes[mounts[mount]["name"]]


def _secret_items(volume: dict) -> set[str]:
    return {item["path"] for item in volume["secret"]["items"]}


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_the_gateway_is_strict_with_credentials_from_secrets(overlay, tmp_path):
    from client.gateway.tenants import MASTER_KEY_FILE
    from client.policy import PolicyProfile
    from client.signing import CERT_ENV, KEY_ENV

    settings, container, mounts, volumes = _gateway(RENDERED[overlay], tmp_path)
    assert settings.policy_profile is PolicyProfile.STRICT
    assert settings.delivery.sign and settings.delivery.audit_store == "database"
    master = _volume_at(mounts, volumes, settings.secrets_path)
    assert master["secret"]["secretName"] == "talkinghead-webhook-master" and MASTER_KEY_FILE in _secret_items(master)
    env = {e["name"]: e["value"] for e in container["env"]}
    signing = [_volume_at(mounts, volumes, Path(env[name])) for name in (CERT_ENV, KEY_ENV)]
    assert signing[0] is signing[1] and signing[0]["secret"]["secretName"] == "talkinghead-signing"
    assert _secret_items(signing[0]) == {Path(env[CERT_ENV]).name, Path(env[KEY_ENV]).name}
    for mount in mounts.values():
        if "secret" in volumes[mount["name"]]:
            assert mount["readOnly"] and volumes[mount["name"]]["secret"]["defaultMode"] == 0o440
    # A read-only root: the gateway writes only to volumes.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for path in (settings.data_dir, settings.staging_path, Path("/tmp")):
        assert "emptyDir" in _volume_at(mounts, volumes, path) or \
            "persistentVolumeClaim" in _volume_at(mounts, volumes, path), path
    dockerfile = (PROJECT_ROOT / "deploy" / "docker" / "gateway.Dockerfile").read_text()
    assert "ENV TALKINGHEAD_GATEWAY_POLICY_PROFILE=strict" in dockerfile and "'.[gateway]'" in dockerfile


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_production_gateways_share_postgresql_and_s3(overlay, tmp_path):
    from urllib.parse import urlparse

    settings, container, mounts, volumes = _gateway(RENDERED[overlay], tmp_path)
    database = urlparse(settings.database)
    assert database.scheme == "postgresql" and database.password is None  # the password comes from the Secret
    assert container["envFrom"] == [{"secretRef": {"name": "talkinghead-gateway"}}]  # not optional
    assert settings.storage.kind == "s3" and settings.storage.bucket
    assert "emptyDir" in _volume_at(mounts, volumes, settings.data_dir)  # scratch only: nothing to lose there
    hpa = _one(RENDERED[overlay], "HorizontalPodAutoscaler", GATEWAY)
    assert hpa["spec"]["maxReplicas"] > 1


def test_the_single_gateway_overlay_keeps_sqlite_to_one_replica(tmp_path):
    documents = RENDERED["single"]
    settings, container, mounts, volumes = _gateway(documents, tmp_path)
    assert settings.database_url is None and settings.database.startswith("sqlite:")  # <data_dir>/gateway.db
    assert settings.storage.kind == "local" and "envFrom" not in container
    claim = _one(documents, "PersistentVolumeClaim",
                 _volume_at(mounts, volumes, settings.data_dir)["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    gateway = _one(documents, "Deployment", GATEWAY)
    assert gateway["spec"]["replicas"] == 1 and gateway["spec"]["strategy"] == {"type": "Recreate"}
    hpa = _one(documents, "HorizontalPodAutoscaler", GATEWAY)
    assert hpa["spec"]["minReplicas"] == hpa["spec"]["maxReplicas"] == 1


def test_every_secret_the_pods_read_is_documented():
    """Secrets are never in the manifests: docs/deployment.md says how to create each, with every key."""
    docs = (PROJECT_ROOT / "docs" / "deployment.md").read_text()
    wanted: dict[str, set[str]] = {}
    for documents in RENDERED.values():
        for document in documents:
            for pod in _pod_specs(document):
                for container in pod.get("containers", []) + pod.get("initContainers", []):
                    for source in container.get("envFrom", []):
                        wanted.setdefault(source["secretRef"]["name"], set())
                for volume in pod.get("volumes", []):
                    if "secret" in volume:
                        wanted.setdefault(volume["secret"]["secretName"], set()).update(
                            item["key"] for item in volume["secret"]["items"])
    assert set(wanted) == {"talkinghead-triton-admin", "talkinghead-gateway", "talkinghead-signing",
                           "talkinghead-webhook-master"}
    for name, keys in wanted.items():
        assert f"`{name}`" in docs, name
        for key in keys:
            assert key in docs, f"{name}: key {key}"
